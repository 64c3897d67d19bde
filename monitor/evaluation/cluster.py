"""Evaluation passes split between the workers of a cluster (the state in PostgreSQL).

A pass is planned once (by the worker that opens it) into partitions:

1. groups of `state.partition_size` districts (energy balance, every meter's decision)
   and the taxi fleet (its rules compare each meter with the whole fleet);
2. groups of lots (each lot judged from its members' decisions of stage 1);
3. the finish: lot extensions applied to their members, then, in one transaction,
   the decisions and district results become the state's, alerts are folded in and
   their notifications queued, and the pass is marked done; then the decisions are
   published.

Every worker takes partitions (`PassBoard.claim`, leases renewed by a heartbeat) until
the pass is done; one killed mid-partition loses its lease, and the partition is taken
again when the lease runs out. The result is the same as one worker's pass
(`Evaluator.run` in one process): the same functions decide each district, meter and
lot, with the same inputs, and the staged decisions keep one worker's order, so the
alerts open in the same order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from monitor.alerts.book import conditions_of, district_conditions
from monitor.core.clock import DAY_MS, format_ts, ms_to_datetime
from monitor.core.decision import Decision, Reason, Stamp, decision_from_dict, extend_decision
from monitor.core.ports import (
    LeaseLost,
    MeterPoint,
    Partition,
    PassBoard,
    PassTicket,
    PlannedPartition,
    StagedDecision,
    StagedDistrict,
    StateUnavailable,
)
from monitor.core.registry import MeterRow
from monitor.core.rulebook import RuleBook
from monitor.electricity.evaluate import (
    DistrictResult,
    fit_district,
    load_events,
    meter_decision,
    misfit_reason,
)
from monitor.electricity.lots import decide_lot
from monitor.evaluation.runner import (
    EVALUATION_RULES,
    EvaluationResult,
    Evaluator,
    RegistryDistricts,
    registry_districts,
    stamped,
)

log = logging.getLogger(__name__)

STAGE_METERS, STAGE_LOTS, STAGE_FINISH = 1, 2, 3
STAGES = {STAGE_METERS: "meters", STAGE_LOTS: "lots", STAGE_FINISH: "finish"}


class PassFailed(RuntimeError):
    """A pass gave up: one of its partitions failed on every attempt."""


@dataclass(frozen=True)
class ClusterSettings:
    """How this worker takes part in passes."""

    owner: str  # this worker in the leases (its MQTT client id)
    lease_s: float = 60.0
    partition_size: int = 50
    max_attempts: int = 3
    poll_s: float = 0.5  # waiting for other workers' partitions
    outage_wait_s: float = 2.0  # waiting for the state database to come back


@dataclass
class _PassInputs:
    """What a worker reads once per pass and every partition of it uses."""

    pass_id: int
    registry: dict[str, MeterRow]
    districts: RegistryDistricts
    by_lot: dict[str, list[MeterRow]]
    events: dict[str, list[MeterPoint]] | None = None


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


class ClusterPasses:
    """Runs passes on a shared `PassBoard`, with the evaluator's store, state and rules.

    passes = ClusterPasses(evaluator, board, ClusterSettings(owner="worker-1"), atomic)
    result = passes.run(None, as_of_ms, book)     # start or join the pass, wait for it
    passes.run("cron:2026-03-01T02:15", None, book)   # each slot once in the cluster
    """

    def __init__(
        self,
        evaluator: Evaluator,
        board: PassBoard,
        settings: ClusterSettings,
        atomic: Callable[[], AbstractContextManager[None]],
        finished: Callable[[int], None] | None = None,
    ) -> None:
        self._ev = evaluator
        self._board = board
        self._s = settings
        self._atomic = atomic
        self._finished = finished or (lambda stage: None)
        self._inputs: _PassInputs | None = None

    # -- the loop --------------------------------------------------------------

    def run(
        self, key: str | None, as_of_ms: int | None, book: RuleBook, decisions: bool = True
    ) -> EvaluationResult | None:
        """Start or join a pass and take part until it is done; its result (None: no
        telemetry yet). A pass already running for another as_of is helped to its end
        first. While the state database is away, waits for it."""
        while True:
            ticket = self._waiting(
                lambda: self._board.open_pass(
                    key,
                    (lambda: as_of_ms) if as_of_ms is not None else self._ev.default_as_of,
                    book.version,
                    lambda at: self.plan(at, book),
                    self._s.owner,
                )
            )
            if ticket is None:
                return None
            done = self.work(ticket, book)
            if self._ours(ticket, key, as_of_ms, book):
                return self._result(done, decisions)

    def help(self, book: RuleBook) -> None:
        """Take part in a pass that is running (a worker left it, or this one restarted)."""
        ticket = self._board.running_pass()
        if ticket is not None:
            self.work(ticket, book)

    def work(self, ticket: PassTicket, book: RuleBook) -> PassTicket:
        """Claim and run partitions of a pass until it is no longer running."""
        while True:
            if ticket.rules_version == book.version:
                part = self._waiting(
                    lambda: self._board.claim(ticket.id, self._s.owner, self._s.lease_s)
                )
                if part is not None:
                    self._run_partition(part, ticket, book)
                    continue
            # Nothing to claim (others hold the rest), or other rules than ours: wait.
            now: PassTicket = self._waiting(lambda: self._board.get_pass(ticket.id))
            if now.status != "running":
                return now
            time.sleep(self._s.poll_s)

    def _ours(self, t: PassTicket, key: str | None, as_of_ms: int | None, book: RuleBook) -> bool:
        if key is not None:
            return t.key == key
        if as_of_ms is None:
            return True  # "evaluate now": the running pass is as good as a new one
        return t.as_of_ms == as_of_ms and t.rules_version == book.version

    def _waiting(self, call: Callable[[], Any]) -> Any:
        while True:
            try:
                return call()
            except StateUnavailable as exc:
                log.warning("evaluation waits for the state store: %s", exc)
                time.sleep(self._s.outage_wait_s)

    def _result(self, t: PassTicket, decisions: bool) -> EvaluationResult:
        if t.status != "done" or t.summary is None:
            raise PassFailed(t.error or f"pass {t.id} is {t.status}")
        meters: dict[str, Decision] = {}
        lots: dict[str, Decision] = {}
        if decisions:
            for r in self._board.staged(t.id, "meter"):
                meters[r.subject] = _decision(r.body)
            for r in self._board.staged(t.id, "lot"):
                lots[r.subject] = _decision(r.body)
        return EvaluationResult(
            t.summary["as_of"], t.rules_version, meters, lots, {}, counts=t.summary
        )

    # -- planning ----------------------------------------------------------------

    def plan(self, as_of_ms: int, book: RuleBook) -> list[PlannedPartition]:
        """The partitions of a pass as of `as_of_ms` (by the worker that opens it)."""
        registry = self._ev.state.registry_rows("elec")
        names = {r.district for r in registry if r.district}
        names |= {s.district for s in self._ev.state.all_seen("elec").values() if s.district}
        lots = sorted({r.lot for r in registry if r.lot})
        size = self._s.partition_size
        parts = [
            PlannedPartition(STAGE_METERS, f"districts:{group[0]}", group)
            for group in chunks(sorted(names), size)
        ]
        parts.append(PlannedPartition(STAGE_METERS, "taxi", []))
        parts += [
            PlannedPartition(STAGE_LOTS, f"lots:{group[0]}", group) for group in chunks(lots, size)
        ]
        parts.append(PlannedPartition(STAGE_FINISH, "finish", []))
        return parts

    # -- partitions ------------------------------------------------------------------

    def _run_partition(self, part: Partition, ticket: PassTicket, book: RuleBook) -> None:
        beat = threading.Event()
        heart = threading.Thread(
            target=self._heartbeat, args=(part, beat), name="pass-heartbeat", daemon=True
        )
        heart.start()
        try:
            if part.stage == STAGE_METERS:
                self._meters(part, ticket, book)
            elif part.stage == STAGE_LOTS:
                self._lots(part, ticket, book)
            else:
                self._finish(part, ticket, book)
            self._finished(part.stage)
        except LeaseLost as exc:
            log.warning("%s; another worker finishes it", exc)
        except StateUnavailable:
            raise  # the lease runs out; the partition is claimed again (by anyone)
        except Exception as exc:
            log.exception("partition %s/%s of pass %d failed", part.stage, part.name, part.pass_id)
            with contextlib.suppress(StateUnavailable):
                self._board.release(part, self._s.owner, repr(exc), self._s.max_attempts)
        finally:
            beat.set()
            heart.join()

    def _heartbeat(self, part: Partition, stop: threading.Event) -> None:
        while not stop.wait(self._s.lease_s / 3):
            try:
                if not self._board.renew(part, self._s.owner, self._s.lease_s):
                    return  # lost: completing will say so
            except StateUnavailable:
                continue  # the lease may run out; completing will say so

    def _inputs_of(self, ticket: PassTicket, book: RuleBook) -> _PassInputs:
        if self._inputs is not None and self._inputs.pass_id == ticket.id:
            return self._inputs
        registry = {r.meter_id: r for r in self._ev.state.registry_rows("elec")}
        by_lot: dict[str, list[MeterRow]] = defaultdict(list)
        for row in registry.values():
            if row.lot:
                by_lot[row.lot].append(row)
        districts = registry_districts(registry.values())
        self._inputs = _PassInputs(ticket.id, registry, districts, by_lot)
        return self._inputs

    def _events(
        self, inputs: _PassInputs, ticket: PassTicket, book: RuleBook
    ) -> dict[str, list[MeterPoint]]:
        if inputs.events is None:
            rules = book.rules.elec
            as_of_ms = ticket.as_of_ms
            start = as_of_ms - int(rules.estimation.window_days * DAY_MS)
            lookback = max(rules.tamper.lookback_days, rules.hardware.lookback_days) * DAY_MS
            inputs.events = load_events(
                self._ev.store, min(start, as_of_ms - int(lookback)), as_of_ms
            )
        return inputs.events

    def _meters(self, part: Partition, ticket: PassTicket, book: RuleBook) -> None:
        stamp = Stamp(format_ts(ticket.as_of_ms), book.version)
        rows: list[StagedDecision] = []
        districts: list[StagedDistrict] = []
        fitted: dict[str, DistrictResult] = {}  # for the export of the districts' points
        decisions: dict[str, Decision] = {}
        if part.name == "taxi":
            for meter, d in self._ev.evaluate_taxis(ticket.as_of_ms, book, stamp).items():
                rows.append(_staged("meter", meter, f"2|{meter}", "", d))
        else:
            inputs = self._inputs_of(ticket, book)
            events = self._events(inputs, ticket, book)
            rules = book.rules.elec
            as_of_ms = ticket.as_of_ms
            start = as_of_ms - int(rules.estimation.window_days * DAY_MS)
            upto = self._ev.summary_sequence()
            for name in part.items:
                master = inputs.districts.masters.get(name)
                dist = fit_district(
                    name,
                    self._ev.district_series(name, start, as_of_ms, upto),
                    master.meter_id if master else None,
                    rules,
                    start,
                    as_of_ms,
                    self._ev.zone,
                    master.accuracy_class if master else None,
                    inputs.districts.places.get(name),
                )
                decided: dict[str, Decision] = {}
                for meter in sorted(set(dist.series) | set(inputs.districts.members.get(name, ()))):
                    row = inputs.registry.get(meter)
                    found = events.get(meter, [])
                    decided[meter] = meter_decision(meter, row, dist, found, rules, stamp, None)
                    rows.append(_staged("meter", meter, f"1|{name}|{meter}", name, decided[meter]))
                # What the district alerts on: failed gates, then a misfit (one pass's order).
                failures = list(dist.gates.failures) if dist.gates is not None else []
                misfit = misfit_reason(dist, rules.estimation)
                reasons = failures + ([misfit] if misfit is not None else [])
                districts.append(
                    StagedDistrict(
                        name,
                        dist.report(decided, stamp),
                        bool(failures),
                        [r.as_dict() for r in reasons],
                    )
                )
                # One district's readings at a time (see Evaluator._districts).
                fitted[name] = dist = dist.without_series()
                decisions |= decided
        with self._board.completing(part, self._s.owner):
            self._board.stage_decisions(part.pass_id, rows)
            self._board.stage_districts(part.pass_id, districts)
        if fitted:  # what only this partition holds: its districts' fits
            done = EvaluationResult(stamp.as_of, book.version, decisions, {}, fitted)
            self._ev.export_part(done, "districts")

    def _lots(self, part: Partition, ticket: PassTicket, book: RuleBook) -> None:
        inputs = self._inputs_of(ticket, book)
        members = [row.meter_id for lot in part.items for row in inputs.by_lot.get(lot, [])]
        staged = {
            r.subject: _decision(r.body) for r in self._board.staged(part.pass_id, "meter", members)
        }
        rules = book.rules.elec
        day = ms_to_datetime(ticket.as_of_ms).date()
        stamp = Stamp(format_ts(ticket.as_of_ms), book.version)
        rows = []
        for lot in part.items:
            group = [
                (r, staged[r.meter_id]) for r in inputs.by_lot.get(lot, []) if r.meter_id in staged
            ]
            if not group:
                continue  # no member decided: no lot decision (as in one worker's pass)
            d = decide_lot(
                lot, group, day, rules.lot, rules.error_limit, self._ev.sampling(lot), stamp
            )
            rows.append(_staged("lot", lot, lot, "", d))
        with self._board.completing(part, self._s.owner):
            self._board.stage_decisions(part.pass_id, rows)

    def _finish(self, part: Partition, ticket: PassTicket, book: RuleBook) -> None:
        inputs = self._inputs_of(ticket, book)
        pass_id, as_of_ms = part.pass_id, ticket.as_of_ms
        as_of = format_ts(as_of_ms)
        extended = {
            r.subject: date.fromisoformat(r.body["new_due_on"])
            for r in self._board.staged(pass_id, "lot")
            if r.body["decision"] == "extend" and r.body.get("new_due_on")
        }
        members = [row.meter_id for lot in extended for row in inputs.by_lot.get(lot, [])]
        changed: list[StagedDecision] = []
        for r in self._board.staged(pass_id, "meter", members):
            row = inputs.registry[r.subject]
            before = _decision(r.body)
            after = extend_decision(before, extended.get(row.lot or ""))
            if after is not before:
                changed.append(
                    StagedDecision(
                        r.scope, r.subject, r.order, r.source, stamped(after), r.occurrences
                    )
                )
        reports = self._patched_reports(pass_id, changed)  # (gates and reasons unchanged)
        summary: dict[str, Any]
        with self._atomic(), self._board.completing(part, self._s.owner):
            self._board.replace_staged(pass_id, changed)
            self._board.replace_district_bodies(pass_id, reports)
            self._raise_alerts(pass_id, as_of_ms, book)
            summary = {"as_of": as_of, "rules_version": book.version, **self._board.counts(pass_id)}
            self._board.publish_pass(pass_id, summary)
        log.info("pass %d as of %s done: %s", pass_id, as_of, summary["meter_decisions"])
        with contextlib.suppress(StateUnavailable):  # housekeeping: the next pass retries
            self._ev.forget_summaries(as_of_ms, book)
        for r in self._board.staged(pass_id, "meter"):
            self._ev.publish_decision(r.body)
        self._after(pass_id, as_of_ms, book)

    def _after(self, pass_id: int, as_of_ms: int, book: RuleBook) -> None:
        """By the worker that finished the pass, once: the export of its decisions and
        fleet summary, and the candidate rules' dry run beside it (kept in the state)."""
        candidate = self._ev.shadow_candidate(book)
        if candidate is None and not self._ev.exports:
            return
        current = self._result(self._board.get_pass(pass_id), True)
        self._ev.export_part(current, "decisions")
        if candidate is None:
            return
        try:
            self._ev.observe_shadow(current, as_of_ms, candidate)
        except Exception:  # the pass is published; its shadow is a report beside it
            log.exception("pass %d: the candidate rules' dry run failed", pass_id)

    def _patched_reports(self, pass_id: int, changed: list[StagedDecision]) -> list[dict[str, Any]]:
        """District results with the extended meters' new decisions."""
        by_district: dict[str, dict[str, str]] = defaultdict(dict)
        for r in changed:
            if r.source:
                by_district[r.source][r.subject] = r.body["decision"]
        reports = self._board.staged_districts(pass_id, sorted(by_district))
        for body in reports:
            now = by_district[body["district"]]
            for m in body["meters"]:
                if m["meter"] in now:
                    m["decision"] = now[m["meter"]]
        return reports

    def _raise_alerts(self, pass_id: int, as_of_ms: int, book: RuleBook) -> None:
        alerts, notify = self._ev.alert_book, self._ev.notifier
        if alerts is None:
            return
        found = [_with_events(r) for r in self._board.staged_findings(pass_id)]
        conditions = conditions_of(found, as_of_ms)
        gates = {
            name: [Reason(**r) for r in reasons]
            for name, reasons in self._board.district_reasons(pass_id)
        }
        conditions += district_conditions(gates, as_of_ms)
        changes = alerts.observe(conditions, as_of_ms, EVALUATION_RULES)
        if notify is not None and changes:
            notify(changes)


def _decision(body: dict[str, Any]) -> Decision:
    """A staged body back as the decision the pass made (the software version that
    `stamped` adds is the body's, not the decision's)."""
    return decision_from_dict({k: v for k, v in body.items() if k != "software_version"})


def _staged(scope: str, subject: str, order: str, source: str, d: Decision) -> StagedDecision:
    """A decision staged with its reasons' events (which its body leaves out)."""
    events = tuple(r.occurrences for r in d.reasons)
    return StagedDecision(scope, subject, order, source, stamped(d), events if any(events) else ())


def _with_events(r: StagedDecision) -> Decision:
    """A staged decision with its reasons' events back on them (the body leaves them out)."""
    d = _decision(r.body)
    if not r.occurrences:
        return d
    reasons = [
        replace(reason, occurrences=events)
        for reason, events in zip(d.reasons, r.occurrences, strict=True)
    ]
    return replace(d, reasons=reasons)
