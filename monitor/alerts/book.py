"""Alerts for supervision authorities: one alert per actionable condition, with a lifecycle.

Each evaluation pass turns its decisions into `Condition`s, one per subject and rules
block among the reasons that carry an alert severity (`conditions_of`). `AlertBook.observe`
folds them into the stored alerts: a new condition opens an alert, the same
condition again raises its `count` and `last_seen` (no flood), a condition
that has been absent for `clear_after_ms` of event time resolves its alert
(hysteresis: one clean pass does not flap it), and a resolved alert whose
condition returns is reopened with its history. People acknowledge and resolve
with an actor and a comment; every step lands in the alert's history.

Two clocks, never mixed: `first_seen`, `last_seen` and every history step's
`event_time` (alias `at`) are event time, the telemetry clock decisions run on;
each step's `recorded_at` is the wall clock when it was written (an audit
time, never an input). A person's step happens at the newest telemetry time
(never before the alert's own last sighting), so the history reads in order on
either clock.

`count` is the number of occurrences the alert stands for. An event rule's
condition carries its distinct events (`occurrences`): each is counted once,
however many passes find it again and however often it was delivered, and
`first_seen`/`last_seen` are the earliest and latest of their event times. A
state condition (beyond the limit, offline) occurs once per evaluation pass:
its count is the passes that found it, each `as_of` once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from monitor.core.catalogue import block_of
from monitor.core.clock import format_ts
from monitor.core.decision import SEVERITY_RANK, Decision, Occurrence, Reason
from monitor.core.explain import sentence

Status = Literal["open", "acknowledged", "resolved"]
SEVERITIES = ("critical", "major", "minor", "info")


@dataclass(frozen=True)
class Condition:
    """Something a rule found about a subject at an event time."""

    rule: str
    kind: str  # elec, taxi, lot
    subject: str
    severity: str
    message: str
    at_ms: int
    evidence: dict[str, Any] = field(default_factory=dict)
    meter: str | None = None
    lot: str | None = None
    district: str | None = None
    # One alert per subject and block (the rules.yaml block of an evaluation rule, see
    # monitor.core.catalogue); empty: one per subject and rule.
    block: str = ""
    # An event rule's distinct events (key, event ms); empty: a state condition, which
    # occurs once per pass at `at_ms`.
    occurrences: tuple[Occurrence, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.block or self.rule}|{self.subject}"


@dataclass(frozen=True)
class Change:
    """What `observe` or a person did to an alert (what gets notified)."""

    action: Literal["opened", "repeated", "reopened", "resolved", "acknowledged"]
    alert: dict[str, Any]


class TransitionError(ValueError):
    """An acknowledge or resolve the alert's status does not allow."""


def conditions_of(decisions: Iterable[Decision], at_ms: int) -> list[Condition]:
    """One condition per decision and rules block among its reasons that carry a severity.

    A reason's `severity` is its finding's (`monitor.core.decision.severity_for`): `info`
    — too little data, within the limits, covered by a work order — raises nothing.
    The reasons of one block (a taxi's distance bias, CUSUM and gross trips; a seal
    event and the heartbeats that report the same break; a lot's indicators) are one
    condition: one actionable thing, at the severity of its worst reason.
    """
    out = []
    for d in decisions:
        for block, reasons in _by_block(d.reasons).items():
            out.append(_condition(d, block, reasons, at_ms))
    return out


def district_conditions(gates: dict[str, list[Reason]], at_ms: int) -> list[Condition]:
    """One condition per district and block among its failed data gates that carry a
    severity (a line loss outside its band; too little data is shown, not alerted)."""
    out = []
    for district, failures in gates.items():
        for block, reasons in _by_block(failures).items():
            worst = reasons[0]
            out.append(
                Condition(
                    rule=worst.rule,
                    kind="district",
                    subject=district,
                    severity=worst.severity,
                    message=f"district {district}: " + _sentences(reasons),
                    at_ms=at_ms,
                    evidence={
                        "value": worst.value,
                        "threshold": worst.threshold,
                        "reasons": [r.as_dict() for r in reasons],
                    },
                    district=district,
                    block=block,
                )
            )
    return out


def _by_block(reasons: Iterable[Reason]) -> dict[str, list[Reason]]:
    """Reasons that raise an alert, by rules block, each block's most severe first."""
    out: dict[str, list[Reason]] = {}
    for r in reasons:
        if SEVERITY_RANK[r.severity] > SEVERITY_RANK["info"]:
            out.setdefault(block_of(r.rule), []).append(r)
    return {
        block: sorted(found, key=lambda r: -SEVERITY_RANK[r.severity])
        for block, found in out.items()
    }


def _sentences(reasons: Sequence[Reason]) -> str:
    """The reasons in words with units (monitor.core.explain), most severe first."""
    return " ".join(sentence(r.rule, r.value, r.threshold, r.detail) for r in reasons)


def _condition(d: Decision, block: str, reasons: list[Reason], at_ms: int) -> Condition:
    worst = reasons[0]
    return Condition(
        rule=worst.rule,
        kind=d.kind,
        subject=d.id,
        severity=worst.severity,
        message=f"{d.id}: " + _sentences(reasons),
        at_ms=at_ms,
        evidence={
            "decision": d.decision,
            "state": d.state,
            "value": worst.value,
            "threshold": worst.threshold,
            "reasons": [r.as_dict() for r in reasons],
            **_core(d.evidence),
        },
        meter=None if d.kind == "lot" else d.id,
        lot=d.id if d.kind == "lot" else d.evidence.get("lot"),
        district=d.evidence.get("district"),
        block=block,
        occurrences=_occurrences(reasons, at_ms),
    )


def _occurrences(reasons: Sequence[Reason], at_ms: int) -> tuple[Occurrence, ...]:
    """The events of a block's event reasons; none when all are states (counted by pass).

    A block that holds both (a clock offset beside clock events) counts its events and,
    for the state beside them, this pass.
    """
    events = tuple(o for r in reasons for o in r.occurrences)
    if not events or all(r.occurrences for r in reasons):
        return events
    return (*events, (f"pass@{at_ms}", at_ms))


def _merge(conditions: Iterable[Condition]) -> dict[str, Condition]:
    """One condition per key: the last one's message and evidence, every occurrence."""
    out: dict[str, Condition] = {}
    for c in conditions:
        before = out.get(c.key)
        if before is not None and (before.occurrences or c.occurrences):
            c = replace(c, occurrences=(*before.occurrences, *c.occurrences))
        out[c.key] = c
    return out


def _core(evidence: dict[str, Any]) -> dict[str, Any]:
    keys = ("error_pct", "error_ci_pct", "n_intervals", "n_trips")
    return {k: evidence[k] for k in keys if k in evidence}


_SCHEMA = """CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, rule TEXT NOT NULL,
    severity TEXT NOT NULL, kind TEXT NOT NULL, meter TEXT, lot TEXT, district TEXT,
    message TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    count INTEGER NOT NULL, status TEXT NOT NULL, evidence TEXT NOT NULL,
    history TEXT NOT NULL)"""
_COLS = (
    "id",
    "key",
    "rule",
    "severity",
    "kind",
    "meter",
    "lot",
    "district",
    "message",
    "first_seen",
    "last_seen",
    "count",
    "status",
    "evidence",
    "history",
)
# The distinct events an event rule's alert stands for, each once (alerts.count is how
# many rows it has). A state condition's alert has none: its count is its passes.
_OCCURRENCES = """CREATE TABLE IF NOT EXISTS alert_occurrences (
    alert_id INTEGER NOT NULL, occurrence TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (alert_id, occurrence))"""


def step(action: str, actor: str, comment: str, event_ms: int, recorded_s: float) -> dict[str, Any]:
    """One history entry, with both clocks labelled (`at` is `event_time`, kept for clients)."""
    event = format_ts(event_ms)
    return {
        "at": event,
        "event_time": event,
        "recorded_at": wall_ts(recorded_s),
        "action": action,
        "actor": actor,
        "comment": comment,
    }


def wall_ts(seconds: float) -> str:
    """A wall-clock instant as RFC 3339 UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _labelled(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry of either clock labelled; entries written before the labels had
    one `at`: event time for the system's steps, the wall clock for a person's."""
    if "event_time" in entry:
        return entry
    if entry.get("actor") == "system":
        return {**entry, "event_time": entry.get("at"), "recorded_at": None}
    return {**entry, "at": None, "event_time": None, "recorded_at": entry.get("at")}


def _json(row: tuple[Any, ...]) -> dict[str, Any]:
    a = dict(zip(_COLS, row, strict=True))
    a["first_seen"], a["last_seen"] = format_ts(a["first_seen"]), format_ts(a["last_seen"])
    a["evidence"] = json.loads(a["evidence"])
    a["history"] = [_labelled(h) for h in json.loads(a["history"])]
    a.pop("key")
    return a


class AlertBook:
    """Alerts in SQLite beside the service's state (its own connection).

    book = AlertBook(Path("data/state.sqlite"), clear_after_ms=2 * 86_400_000)
    changes = book.observe(conditions, at_ms)

    `clock` (epoch s, injectable) stamps `recorded_at` only.
    """

    def __init__(
        self, path: Path, clear_after_ms: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_OCCURRENCES)
        self._db.execute("CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, severity)")
        self._db.execute("CREATE INDEX IF NOT EXISTS alerts_meter ON alerts (meter)")
        self._lock = threading.Lock()
        self.clear_after_ms = clear_after_ms

    def _one(self, where: str, args: Iterable[Any]) -> tuple[Any, ...] | None:
        row = self._db.execute(
            f"SELECT {', '.join(_COLS)} FROM alerts WHERE {where}", tuple(args)
        ).fetchone()
        return tuple(row) if row is not None else None

    def observe(
        self, conditions: list[Condition], at_ms: int, scope: tuple[str, ...] = ("",)
    ) -> list[Change]:
        """Fold one pass's conditions in.

        Conditions with the same key (one per event, say) are one alert's: their
        occurrences are merged. Only alerts whose rule starts with a `scope` prefix can
        be cleared by their absence: the evaluation pass does not speak for offline
        detection and vice versa.
        """
        changes: list[Change] = []
        merged = _merge(conditions)
        with self._lock:
            self._db.execute("BEGIN")
            for c in merged.values():
                changes.append(self._upsert(c, at_ms))
            changes += self._clear(set(merged), at_ms, scope)
            self._db.execute("COMMIT")
        return changes

    def _upsert(self, c: Condition, pass_ms: int) -> Change:
        row = self._one("key = ?", [c.key])
        evidence = json.dumps(c.evidence, default=str)
        if row is None:
            history = json.dumps([step("opened", "system", c.message, c.at_ms, self._clock())])
            cur = self._db.execute(
                "INSERT INTO alerts (key, rule, severity, kind, meter, lot, district, message, "
                "first_seen, last_seen, count, status, evidence, history) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'open', ?, ?)",
                (
                    c.key,
                    c.rule,
                    c.severity,
                    c.kind,
                    c.meter,
                    c.lot,
                    c.district,
                    c.message,
                    c.at_ms,
                    c.at_ms,
                    evidence,
                    history,
                ),
            )
            alert_id = int(cur.lastrowid or 0)
            if c.occurrences:  # a state condition's first pass is the 1 it opened with
                self._count(alert_id, c, pass_ms)
            return Change("opened", _json(self._one("id = ?", [alert_id]) or ()))
        a = dict(zip(_COLS, row, strict=True))
        later = self._count(int(a["id"]), c, pass_ms)
        history = json.loads(a["history"])
        action: Literal["repeated", "reopened"] = "repeated"
        status = a["status"]
        if status == "resolved" and later:
            # Back only with something new: an event already counted, still inside the
            # rule's lookback, does not reopen what a person or the system resolved.
            action, status = "reopened", "open"
            history.append(step("reopened", "system", c.message, c.at_ms, self._clock()))
        self._db.execute(
            "UPDATE alerts SET status = ?, rule = ?, message = ?, evidence = ?, severity = ?, "
            "history = ? WHERE id = ?",
            (status, c.rule, c.message, evidence, c.severity, json.dumps(history), a["id"]),
        )
        return Change(action, _json(self._one("id = ?", [a["id"]]) or ()))

    def _count(self, alert_id: int, c: Condition, pass_ms: int) -> bool:
        """Add the condition's new occurrences and take count, first and last seen from
        them; whether one came after the alert's last sighting (what reopens it).

        A state condition is one occurrence per pass: counted when the pass's time
        (`pass_ms`, its `as_of`) is after the alert's `last_seen` (a pass repeated at the
        same `as_of` is the same pass).
        An event counted once is never counted again, and an event older than the
        alert's last sighting (delivered late, or found again after an upgrade from
        counts by pass) is counted without reopening it.
        """
        if not c.occurrences:
            cur = self._db.execute(
                "UPDATE alerts SET count = count + 1, last_seen = ? WHERE id = ? AND last_seen < ?",
                (pass_ms, alert_id, pass_ms),
            )
            return cur.rowcount > 0
        row = self._db.execute("SELECT last_seen FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        known = {
            key
            for (key,) in self._db.execute(
                "SELECT occurrence FROM alert_occurrences WHERE alert_id = ?", (alert_id,)
            )
        }
        fresh = dict(o for o in c.occurrences if o[0] not in known)
        self._db.executemany(
            "INSERT INTO alert_occurrences (alert_id, occurrence, at_ms) VALUES (?, ?, ?)",
            [(alert_id, key, at) for key, at in fresh.items()],
        )
        self._db.execute(
            "UPDATE alerts SET (count, first_seen, last_seen) = (SELECT count(*), min(at_ms), "
            "max(at_ms) FROM alert_occurrences WHERE alert_id = ?) WHERE id = ?",
            (alert_id, alert_id),
        )
        return any(at > int(row[0]) for at in fresh.values())

    def _clear(self, seen: set[str], at_ms: int, scope: tuple[str, ...]) -> list[Change]:
        out = []
        rows = self._db.execute(
            f"SELECT {', '.join(_COLS)} FROM alerts WHERE status != 'resolved' AND last_seen < ?",
            (at_ms - self.clear_after_ms,),
        ).fetchall()
        for row in rows:
            a = dict(zip(_COLS, row, strict=True))
            if a["key"] in seen or not str(a["rule"]).startswith(scope):
                continue
            history = json.loads(a["history"])
            history.append(step("resolved", "system", "condition cleared", at_ms, self._clock()))
            self._db.execute(
                "UPDATE alerts SET status = 'resolved', history = ? WHERE id = ?",
                (json.dumps(history), a["id"]),
            )
            out.append(Change("resolved", _json(self._one("id = ?", [a["id"]]) or ())))
        return out

    def act(
        self,
        alert_id: int,
        action: Literal["ack", "resolve"],
        actor: str,
        comment: str,
        event_ms: int | None,
    ) -> Change:
        """A person acknowledges or resolves an alert.

        `event_ms` is the telemetry clock when they act (the newest telemetry time;
        None before any): the step's event time is never before the alert's last
        sighting. The wall clock is recorded beside it.
        """
        with self._lock:
            row = self._one("id = ?", [alert_id])
            if row is None:
                raise KeyError(alert_id)
            a = dict(zip(_COLS, row, strict=True))
            allowed = {"ack": ("open",), "resolve": ("open", "acknowledged")}[action]
            if a["status"] not in allowed:
                raise TransitionError(f"alert {alert_id} is {a['status']}: cannot {action}")
            status = "acknowledged" if action == "ack" else "resolved"
            history = json.loads(a["history"])
            event = max(event_ms or 0, int(a["last_seen"]))
            history.append(step(status, actor, comment, event, self._clock()))
            self._db.execute(
                "UPDATE alerts SET status = ?, history = ? WHERE id = ?",
                (status, json.dumps(history), alert_id),
            )
            done = _json(self._one("id = ?", [alert_id]) or ())
        return Change("acknowledged" if action == "ack" else "resolved", done)

    def get(self, alert_id: int) -> dict[str, Any] | None:
        """One alert with its history."""
        with self._lock:
            row = self._one("id = ?", [alert_id])
        return _json(row) if row else None

    def list(
        self,
        status: str | None,
        severity: str | None,
        since_ms: int | None,
        after_id: int,
        limit: int,
        kind: str | None = None,
        district: str | None = None,
        meter: str | None = None,
        lot: str | None = None,
    ) -> list[dict[str, Any]]:
        """Alerts by id, filtered; `since` is on last_seen (event time)."""
        where: list[str] = ["id > ?"]
        args: list[Any] = [after_id]
        filters = (
            ("status", status),
            ("severity", severity),
            ("kind", kind),
            ("district", district),
            ("meter", meter),
            ("lot", lot),
        )
        for col, value in filters:
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since_ms is not None:
            where.append("last_seen >= ?")
            args.append(since_ms)
        sql = (
            f"SELECT {', '.join(_COLS)} FROM alerts WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_json(tuple(r)) for r in rows]

    def open_by_severity(self) -> dict[str, int]:
        """Open (not yet acknowledged) alerts per severity, most severe first."""
        with self._lock:
            rows = dict(
                self._db.execute(
                    "SELECT severity, count(*) FROM alerts WHERE status = 'open' GROUP BY severity"
                ).fetchall()
            )
        return {s: int(rows.get(s, 0)) for s in SEVERITIES}

    def close(self) -> None:
        with self._lock:
            self._db.close()
