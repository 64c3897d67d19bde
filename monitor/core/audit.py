"""The audit log's hash chain: how a record is sealed and how the chain is checked.

Each record's body is canonical JSON (sorted keys, no spaces) holding its sequence
number, wall-clock time, actor, role, action, subject, what changed, the software
version that wrote it and `prev`, the SHA-256 of the previous record's body. Changing
any record changes its hash; the next record then names a hash that no longer
matches, so an edit, an insertion or a deletion shows up at the first broken link.

    row = seal(seq=1, prev=GENESIS, entry=entry, at="2026-03-01T00:00:00.000Z", software="0.1.0")
    check = ChainCheck(anchor=None)
    for row in rows: broken = check.feed(row)   # the first Break, or None
    broken = check.finish(head)                  # a deleted newest record
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from monitor.core.ports import AuditAnchor, AuditEntry, AuditRow

GENESIS = "0" * 64


def canonical(body: dict[str, Any]) -> str:
    """The one JSON text of a body that its hash is taken over."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(seq: int, prev: str, entry: AuditEntry, at: str, software: str) -> AuditRow:
    """The stored row of `entry` as record `seq`, chained to the hash `prev`."""
    body = canonical(
        {
            "seq": seq,
            "at": at,
            "actor": entry.actor,
            "role": entry.role,
            "action": entry.action,
            "subject": entry.subject,
            "detail": entry.detail,
            "software_version": software,
            "prev": prev,
        }
    )
    return AuditRow(seq, body, digest(body))


def record_json(row: AuditRow) -> dict[str, Any]:
    """A row as `GET /api/audit` shows it: the body's fields plus its hash."""
    body: dict[str, Any] = json.loads(row.body)
    return {**body, "hash": row.hash}


@dataclass(frozen=True)
class Break:
    """The first link that does not hold: the record where it shows and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.reason}"


class ChainCheck:
    """Walks rows in seq order (fed page by page) and stops at the first break."""

    def __init__(self, anchor: AuditAnchor | None) -> None:
        self.expected_seq = anchor.seq + 1 if anchor else 1
        self.prev = anchor.hash if anchor else GENESIS
        self.checked = 0
        self.broken: Break | None = None

    def feed(self, row: AuditRow) -> Break | None:
        """Check one more row; the first Break found (then every later call returns it)."""
        if self.broken is None:
            self.broken = self._check(row)
            if self.broken is None:
                self.checked += 1
                self.expected_seq = row.seq + 1
                self.prev = row.hash
        return self.broken

    def _check(self, row: AuditRow) -> Break | None:
        if row.seq != self.expected_seq:
            return Break(
                self.expected_seq,
                f"missing: the next stored record is {row.seq} (deleted or never written)",
            )
        if digest(row.body) != row.hash:
            return Break(row.seq, "its content does not match its hash (edited)")
        try:
            body = json.loads(row.body)
        except json.JSONDecodeError:
            return Break(row.seq, "its content is not JSON (edited)")
        if body.get("seq") != row.seq:
            return Break(row.seq, f"it says it is record {body.get('seq')} (moved)")
        if body.get("prev") != self.prev:
            return Break(
                row.seq,
                "it does not chain to the record before it "
                f"(names {str(body.get('prev'))[:12]}…, that one hashes to {self.prev[:12]}…): "
                "the record before was edited, replaced or removed",
            )
        return None

    def finish(self, head: AuditAnchor | None) -> Break | None:
        """After the last row: the log's own head must be the last row checked."""
        if self.broken is not None or head is None:
            return self.broken
        if head.seq >= self.expected_seq:
            self.broken = Break(
                self.expected_seq,
                f"missing: the log's head is record {head.seq}, the last stored one "
                f"is {self.expected_seq - 1} (newest records deleted)",
            )
        elif head.seq == self.expected_seq - 1 and head.hash != self.prev:
            self.broken = Break(head.seq, "it does not match the log's head hash (edited)")
        return self.broken
