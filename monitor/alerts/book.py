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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from monitor.core.catalogue import block_of
from monitor.core.clock import format_ts
from monitor.core.decision import SEVERITY_RANK, Decision, Occurrence, Reason
from monitor.core.explain import sentence
from monitor.core.ports import AlertFilter, AlertRecord, AlertStore, AlertWrites
from monitor.store.alertrows import SqliteAlerts

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


def _recount(rec: AlertRecord, occurrences: dict[str, int]) -> None:
    """Count, first and last sighting of an event alert from all its occurrences."""
    if occurrences:
        rec.count = len(occurrences)
        rec.first_seen, rec.last_seen = min(occurrences.values()), max(occurrences.values())


def _json(r: AlertRecord) -> dict[str, Any]:
    a = asdict(r)
    a["first_seen"], a["last_seen"] = format_ts(r.first_seen), format_ts(r.last_seen)
    a["evidence"] = json.loads(r.evidence)
    a["history"] = [_labelled(h) for h in json.loads(r.history)]
    a.pop("key")
    return a


class AlertBook:
    """The alert lifecycle over an `AlertStore` (SQLite beside the state, or PostgreSQL).

    book = AlertBook(Path("data/state.sqlite"), clear_after_ms=2 * 86_400_000)
    changes = book.observe(conditions, at_ms)

    A path opens the embedded store there. `clock` (epoch s, injectable) stamps
    `recorded_at` only.
    """

    def __init__(
        self,
        store: AlertStore | Path,
        clear_after_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._rows: AlertStore = SqliteAlerts(store) if isinstance(store, Path) else store
        self.clear_after_ms = clear_after_ms

    def observe(
        self, conditions: list[Condition], at_ms: int, scope: tuple[str, ...] = ("",)
    ) -> list[Change]:
        """Fold one pass's conditions in.

        Conditions with the same key (one per event, say) are one alert's: their
        occurrences are merged. Only alerts whose rule starts with a `scope` prefix can
        be cleared by their absence: the evaluation pass does not speak for offline
        detection and vice versa.
        """
        merged = _merge(conditions)
        with self._rows.writing() as w:
            known = w.by_keys(list(merged))
            counted = w.occurrences([r.id for r in known.values()])
            fresh: list[tuple[AlertRecord, dict[str, int]]] = []  # ids given when inserted
            dirty: list[tuple[AlertRecord, dict[str, int]]] = []
            steps: list[tuple[str, AlertRecord, dict[str, Any]]] = []
            for c in merged.values():
                rec = known.get(c.key)
                if rec is None:
                    rec = self._opened(c)
                    new = dict(c.occurrences)
                    _recount(rec, new)
                    fresh.append((rec, new))
                    action = "opened"
                else:
                    new = {k: at for k, at in c.occurrences if k not in counted.get(rec.id, {})}
                    action = self._seen_again(rec, c, at_ms, new, counted.get(rec.id, {}))
                    dirty.append((rec, new))
                steps.append((action, rec, _json(rec)))
            ids = w.insert([rec for rec, _ in fresh])
            for (rec, _), new_id in zip(fresh, ids, strict=True):
                rec.id = new_id
            for _, rec, snapshot in steps:
                snapshot["id"] = rec.id  # a new alert's id is known once inserted
            w.update([rec for rec, _ in dirty])
            w.add_occurrences(
                [(rec.id, k, at) for rec, new in (*fresh, *dirty) for k, at in new.items()]
            )
            changes = [Change(action, snap) for action, _, snap in steps]  # type: ignore[arg-type]
            cleared = self._clear(w, set(merged), at_ms, scope)
        return changes + cleared

    def _opened(self, c: Condition) -> AlertRecord:
        history = json.dumps([step("opened", "system", c.message, c.at_ms, self._clock())])
        return AlertRecord(
            0,
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
            1,
            "open",
            json.dumps(c.evidence, default=str),
            history,
        )

    def _seen_again(
        self,
        rec: AlertRecord,
        c: Condition,
        pass_ms: int,
        new: dict[str, int],
        counted: dict[str, int],
    ) -> str:
        """The condition again: count what is new, reopen a resolved alert only on an
        occurrence after its last sighting; returns the action.

        A state condition is one occurrence per pass: counted when the pass's time
        (`pass_ms`, its `as_of`) is after the alert's `last_seen` (a pass repeated at the
        same `as_of` is the same pass). An event counted once is never counted again,
        and an event older than the alert's last sighting (delivered late, or found
        again after an upgrade from counts by pass) is counted without reopening it.
        """
        if c.occurrences:
            later = any(at > rec.last_seen for at in new.values())
            _recount(rec, {**counted, **new})
        else:
            later = pass_ms > rec.last_seen
            if later:
                rec.count += 1
                rec.last_seen = pass_ms
        action = "repeated"
        if rec.status == "resolved" and later:
            # Back only with something new: an event already counted, still inside the
            # rule's lookback, does not reopen what a person or the system resolved.
            action, rec.status = "reopened", "open"
            history = json.loads(rec.history)
            history.append(step("reopened", "system", c.message, c.at_ms, self._clock()))
            rec.history = json.dumps(history)
        rec.rule = c.rule  # the worst reason of the block may change
        rec.message = c.message
        rec.evidence = json.dumps(c.evidence, default=str)
        rec.severity = c.severity
        return action

    def _clear(
        self, w: AlertWrites, seen: set[str], at_ms: int, scope: tuple[str, ...]
    ) -> list[Change]:
        out = []
        cleared = []
        for rec in w.unresolved_before(at_ms - self.clear_after_ms):
            if rec.key in seen or not rec.rule.startswith(scope):
                continue
            history = json.loads(rec.history)
            history.append(step("resolved", "system", "condition cleared", at_ms, self._clock()))
            rec.status, rec.history = "resolved", json.dumps(history)
            cleared.append(rec)
            out.append(Change("resolved", _json(rec)))
        w.update(cleared)
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
        with self._rows.writing() as w:
            rec = w.by_id(alert_id)
            if rec is None:
                raise KeyError(alert_id)
            allowed = {"ack": ("open",), "resolve": ("open", "acknowledged")}[action]
            if rec.status not in allowed:
                raise TransitionError(f"alert {alert_id} is {rec.status}: cannot {action}")
            status = "acknowledged" if action == "ack" else "resolved"
            history = json.loads(rec.history)
            event = max(event_ms or 0, rec.last_seen)
            history.append(step(status, actor, comment, event, self._clock()))
            rec.status, rec.history = status, json.dumps(history)
            w.update([rec])
        return Change("acknowledged" if action == "ack" else "resolved", _json(rec))

    def get(self, alert_id: int) -> dict[str, Any] | None:
        """One alert with its history."""
        rec = self._rows.get(alert_id)
        return _json(rec) if rec is not None else None

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
        flt = AlertFilter(status, severity, kind, district, meter, lot, since_ms)
        return [_json(r) for r in self._rows.query(flt, after_id, limit)]

    def open_by_severity(self) -> dict[str, int]:
        """Open (not yet acknowledged) alerts per severity, most severe first."""
        found = self._rows.count_open()
        return {s: int(found.get(s, 0)) for s in SEVERITIES}

    def close(self) -> None:
        self._rows.close()
