"""The audit log in SQLite: the embedded implementation of `core.ports.AuditLog`.

Append-only by construction: triggers refuse any UPDATE of a record and any DELETE
above the purge anchor, and the anchor only moves forward. The chain itself
(`core.audit`) is what shows tampering done around them, e.g. with the file open in
another program.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from monitor.core.audit import seal
from monitor.core.clock import format_ts
from monitor.core.ports import AuditAnchor, AuditEntry, AuditRow

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY, at TEXT NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at)",
    # One row each: the last purged record (where the chain now starts) and the newest.
    """CREATE TABLE IF NOT EXISTS audit_marks (
        name TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit records are never changed'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
        WHEN old.seq > coalesce((SELECT seq FROM audit_marks WHERE name = 'anchor'), 0)
        BEGIN SELECT RAISE(ABORT, 'audit records are only purged, oldest first'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_anchor_forward BEFORE UPDATE ON audit_marks
        WHEN new.seq < old.seq
        BEGIN SELECT RAISE(ABORT, 'the audit anchor and head only move forward'); END""",
]


class SqliteAudit:
    """SQLite-backed audit log (its own tables, by default in the state file).

    audit = SqliteAudit(Path("data/state.sqlite"), software="0.1.0")
    audit.append(AuditEntry("inspector.wang", "authority", "alert.ack", "alert:12", {...}))
    """

    def __init__(self, path: Path, software: str, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._software = software
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA:
            self._db.execute(stmt)

    def _mark(self, name: str) -> AuditAnchor | None:
        row = self._db.execute(
            "SELECT seq, hash FROM audit_marks WHERE name = ?", (name,)
        ).fetchone()
        return AuditAnchor(int(row[0]), str(row[1])) if row else None

    def _set_mark(self, name: str, seq: int, digest: str) -> None:
        self._db.execute(
            "INSERT INTO audit_marks VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
            "SET seq = excluded.seq, hash = excluded.hash",
            (name, seq, digest),
        )

    def append(self, entry: AuditEntry) -> AuditRow:
        with self._lock:
            # IMMEDIATE: another process appending waits, so both chain to the true head.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                head = self._mark("head") or self._mark("anchor")
                seq, prev = (head.seq + 1, head.hash) if head else (1, "0" * 64)
                at = format_ts(int(self._clock() * 1000))
                row = seal(seq, prev, entry, at, self._software)
                self._db.execute(
                    "INSERT INTO audit_log VALUES (?, ?, ?, ?)", (seq, at, row.body, row.hash)
                )
                self._set_mark("head", seq, row.hash)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return row

    def rows(self, after_seq: int, limit: int) -> list[AuditRow]:
        with self._lock:
            found = self._db.execute(
                "SELECT seq, body, hash FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [AuditRow(int(s), str(b), str(h)) for s, b, h in found]

    def anchor(self) -> AuditAnchor | None:
        with self._lock:
            return self._mark("anchor")

    def head(self) -> AuditAnchor | None:
        with self._lock:
            return self._mark("head")

    def purge(self, before: str) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT seq, hash FROM audit_log WHERE at < ? ORDER BY seq DESC LIMIT 1",
                    (before,),
                ).fetchone()
                gone = 0
                if last is not None:
                    self._set_mark("anchor", int(last[0]), str(last[1]))
                    gone = self._db.execute(
                        "DELETE FROM audit_log WHERE seq <= ?", (int(last[0]),)
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if gone:
            self.append(
                AuditEntry(
                    "service", "system", "audit.purge", "audit", {"before": before, "purged": gone}
                )
            )
        return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()
