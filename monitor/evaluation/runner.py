"""One evaluation pass as of a time: districts → meters → lots → stored decisions.

Everything here is a function of the telemetry up to `as_of` and of the rules:
the window is [as_of − window_days, as_of], nothing reads the wall clock, so a
replay of last year's data gives last year's answers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any, Literal, Protocol

from monitor import __version__
from monitor.alerts.book import AlertBook, Change, conditions_of, district_conditions
from monitor.core.clock import DAY_MS, format_ts, ms_to_datetime, parse_ts
from monitor.core.decision import (
    Decision,
    Reason,
    Stamp,
    decision_from_dict,
    extend_decision,
)
from monitor.core.ports import (
    DaySummaries,
    MeterPoint,
    Publisher,
    Series,
    StateStore,
    TelemetryStore,
)
from monitor.core.registry import MeterRow
from monitor.core.rulebook import ElecRules, EstimationRule, RuleBook
from monitor.electricity.balance import FeederPlace
from monitor.electricity.days import load_district_days
from monitor.electricity.evaluate import (
    READING_FIELDS,
    DistrictResult,
    fit_district,
    load_district,
    load_events,
    meter_decision,
    misfit_reason,
)
from monitor.electricity.lots import SampleResult, Sampling, decide_lot
from monitor.taxi import evaluate as evaluate_taxi
from monitor.taxi.fares import FareCache
from monitor.taxi.tariff import TariffBook

log = logging.getLogger(__name__)


class ClusterRun(Protocol):
    """The cluster's passes (evaluation.cluster.ClusterPasses), as the evaluator uses them."""

    def run(
        self, key: str | None, as_of_ms: int | None, book: RuleBook, decisions: bool = True
    ) -> EvaluationResult | None: ...

    def help(self, book: RuleBook) -> None: ...


Publish = Callable[[str, dict[str, Any]], None]
# Rule families an evaluation pass speaks for (it may clear their alerts).
EVALUATION_RULES = ("elec.", "taxi.", "lot.")


@dataclass
class EvaluationResult:
    """What a pass decided."""

    as_of: str
    rules_version: str
    meters: dict[str, Decision]
    lots: dict[str, Decision]
    districts: dict[str, DistrictResult]
    # A cluster pass's summary as the board counted it (its districts are not held here).
    counts: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Counts by decision and state, for the API and the CLI."""
        if self.counts is not None:
            return dict(self.counts)

        def count(items: dict[str, Decision], attr: str) -> dict[str, int]:
            out: dict[str, int] = defaultdict(int)
            for d in items.values():
                out[getattr(d, attr)] += 1
            return dict(sorted(out.items()))

        return {
            "as_of": self.as_of,
            "rules_version": self.rules_version,
            "meters": len(self.meters),
            "meter_decisions": count(self.meters, "decision"),
            "meter_states": count(self.meters, "state"),
            "lots": len(self.lots),
            "lot_decisions": count(self.lots, "decision"),
            "districts": len(self.districts),
            "districts_passing_gates": sum(
                1 for d in self.districts.values() if d.gates is not None and d.gates.passed
            ),
        }


ExportPart = Literal["all", "districts", "decisions"]
"""What of a pass an export writes: all of it, or (a partitioned pass) its districts'
results from each partition, then every decision and the fleet summary at the finish."""


class ResultExport(Protocol):
    """Hands a recorded pass on (e.g. to InfluxDB for the dashboards)."""

    def __call__(self, result: EvaluationResult, part: ExportPart = "all", /) -> None: ...


class ShadowHook(Protocol):
    """Candidate rules evaluated beside the ones in force (`evaluation.shadow.RulesDesk`)."""

    def candidate(self) -> RuleBook | None:
        """The candidate rules, or None."""

    def observe(self, current: EvaluationResult, candidate: EvaluationResult) -> None:
        """One recorded pass and the candidate's dry run at the same `as_of`."""


# Days of summaries kept before a pass's window: the span of a default `rules backtest`
# (one pass a day for 7 days), which then reads nothing from the telemetry store.
SUMMARY_MARGIN_DAYS = 7


@dataclass(frozen=True)
class RegistryDistricts:
    """The registry by district: what a pass (one process's, or a cluster partition's)
    fits each district with."""

    members: dict[str, list[str]]  # its registered meters
    masters: dict[str, MeterRow]  # its master meter
    places: dict[str, dict[str, FeederPlace]]  # where its meters hang (optional columns)


def registry_districts(rows: Iterable[MeterRow]) -> RegistryDistricts:
    """Group registry rows by district, once per pass."""
    members: dict[str, list[str]] = defaultdict(list)
    masters: dict[str, MeterRow] = {}
    places: dict[str, dict[str, FeederPlace]] = defaultdict(dict)
    for r in rows:
        if not r.district:
            continue
        members[r.district].append(r.meter_id)
        if r.effective_role == "master":
            masters[r.district] = r
        if r.feeder_branch:
            places[r.district][r.meter_id] = FeederPlace(r.feeder_branch, r.feeder_distance_m)
    return RegistryDistricts(dict(members), masters, dict(places))


class Evaluator:
    """Runs evaluation passes over the store and records decisions in the state.

    Evaluator(store, state).run(as_of_ms, rulebook)
    """

    def __init__(
        self,
        store: TelemetryStore,
        state: StateStore,
        publish: Publish | None = None,
        tariffs: Callable[[], TariffBook] | None = None,
        alerts: AlertBook | None = None,
        notify: Callable[[Sequence[Change]], None] | None = None,
        zone: tzinfo = UTC,
        export: ResultExport | None = None,
        shadow: ShadowHook | None = None,
        summaries: DaySummaries | None = None,
    ) -> None:
        # Day summaries (`electricity.days`, `taxi.days`): a district's (a bucket of
        # taxis') complete days that no store marked as written since are taken from
        # them instead of the telemetry store.
        # Only where every writer of readings marks (stores opened with the state).
        self._summaries = summaries
        # Candidate rules a recorded pass also evaluates, as a dry run.
        self._shadow = shadow
        self._zone = zone
        # Each recorded pass, handed on as it is (e.g. to InfluxDB for the dashboards).
        self._export = export
        # Fare checks carried from one pass to the next (exact: see FareCache).
        self._taxi_fares = FareCache()
        self._alerts = alerts
        self._notify = notify
        self._store = store
        self._state = state
        self._publish = publish
        self._tariffs = tariffs or TariffBook
        self._lock = threading.Lock()  # one pass at a time (scheduler and API)
        self._cluster: ClusterRun | None = None

    def use_cluster(self, cluster: ClusterRun) -> None:
        """Run recorded passes through a cluster's shared board (see evaluation.cluster)."""
        self._cluster = cluster

    # What a cluster's passes read of this evaluator (evaluation.cluster).

    @property
    def state(self) -> StateStore:
        return self._state

    @property
    def store(self) -> TelemetryStore:
        return self._store

    @property
    def zone(self) -> tzinfo:
        return self._zone

    @property
    def alert_book(self) -> AlertBook | None:
        return self._alerts

    @property
    def notifier(self) -> Callable[[Sequence[Change]], None] | None:
        return self._notify

    def evaluate_taxis(self, as_of_ms: int, book: RuleBook, stamp: Stamp) -> dict[str, Decision]:
        """The taxi half of a pass."""
        return self._taxis(as_of_ms, book, stamp)

    def sampling(self, lot: str) -> Sampling | None:
        """A lot's sampling in progress (from its stored decision and lab results)."""
        return self._sampling(lot)

    def publish_decision(self, body: dict[str, Any]) -> None:
        """Publish one stored decision (retained), when this evaluator publishes."""
        if self._publish is not None:
            self._publish(f"{body['kind']}/{body['id']}", body)

    def run_scheduled(self, slot: str, book: RuleBook) -> dict[str, Any] | None:
        """The pass of a schedule slot as of the latest telemetry; in a cluster, once per
        slot however many workers' schedules fire. Its summary, or None (no telemetry)."""
        if self._cluster is not None:
            with self._lock:
                done = self._cluster.run(f"cron:{slot}", None, book, decisions=False)
            return None if done is None else done.summary()
        as_of = self.default_as_of()
        return None if as_of is None else self.run(as_of, book).summary()

    def help_running(self, book: RuleBook) -> None:
        """In a cluster: take part in a pass another worker started (or left)."""
        if self._cluster is not None and self._lock.acquire(blocking=False):
            try:
                self._cluster.help(book)
            finally:
                self._lock.release()

    def tariffs(self) -> TariffBook:
        """The tariffs trips are priced under: config plus every rollout."""
        return evaluate_taxi.tariff_book(self._tariffs(), self._state)

    def default_as_of(self) -> int | None:
        """The latest telemetry time seen, or None before any telemetry."""
        return self._state.latest_event_ts()

    def run(
        self, as_of_ms: int, book: RuleBook, record: bool = True, decisions: bool = True
    ) -> EvaluationResult:
        """Evaluate every electricity meter and lot as of `as_of_ms`.

        `record=False` is a dry run (backtests): nothing is stored or published. In a
        cluster a recorded pass is the cluster's: started or joined, split between the
        workers; `decisions=False` leaves its decisions out of the result (the counts
        are there).
        """
        with self._lock:
            if record and self._cluster is not None:
                done = self._cluster.run(None, as_of_ms, book, decisions)
                assert done is not None  # an as_of was given
                return done
            return self._run(as_of_ms, book, record)

    def _run(self, as_of_ms: int, book: RuleBook, record: bool) -> EvaluationResult:
        rules = book.rules.elec
        as_of = format_ts(as_of_ms)
        start = as_of_ms - int(rules.estimation.window_days * DAY_MS)
        registry = {r.meter_id: r for r in self._state.registry_rows("elec")}
        lookback = max(rules.tamper.lookback_days, rules.hardware.lookback_days) * DAY_MS
        events = load_events(self._store, min(start, as_of_ms - int(lookback)), as_of_ms)
        stamp = Stamp(as_of, book.version)
        districts, meters = self._districts(registry, events, rules, stamp, start)
        if record:
            self.forget_summaries(as_of_ms, book)
        lots = self._lots(registry, meters, as_of_ms, book)
        extended = {lot: d.new_due_on for lot, d in lots.items() if d.decision == "extend"}
        if extended:  # their members keep or extend (as `decide_meter` with the lot's date)
            for meter, d in meters.items():
                lot = registry[meter].lot if meter in registry else None
                meters[meter] = extend_decision(d, extended.get(lot or ""))
        meters |= self._taxis(as_of_ms, book, stamp)
        result = EvaluationResult(as_of, book.version, meters, lots, districts)
        if record:
            self._record(meters, lots, districts, stamp)
            self._raise_alerts(meters, lots, districts, as_of_ms, book.rules.elec.estimation)
            if self._export is not None:
                self._export(result)
            self._run_shadow(result, as_of_ms, book)
        return result

    @property
    def exports(self) -> bool:
        """Whether recorded passes are handed on (`export`)."""
        return self._export is not None

    def export_part(self, result: EvaluationResult, part: ExportPart) -> None:
        """Hand on part of a partitioned pass (the rest comes from other partitions)."""
        if self._export is not None:
            self._export(result, part)

    def shadow_candidate(self, book: RuleBook) -> RuleBook | None:
        """The candidate rules to dry-run beside a pass under `book` (None: nothing to do)."""
        candidate = self._shadow.candidate() if self._shadow is not None else None
        return None if candidate is None or candidate.version == book.version else candidate

    def observe_shadow(self, current: EvaluationResult, as_of_ms: int, candidate: RuleBook) -> None:
        """The candidate's dry run at the pass's `as_of`, compared with the pass."""
        if self._shadow is not None:
            self._shadow.observe(current, self._run(as_of_ms, candidate, False))

    def _run_shadow(self, result: EvaluationResult, as_of_ms: int, book: RuleBook) -> None:
        """The candidate rules' dry run at the same `as_of`, handed to the shadow hook."""
        candidate = self._shadow.candidate() if self._shadow is not None else None
        if self._shadow is None or candidate is None or candidate.version == book.version:
            return
        self._shadow.observe(result, self._run(as_of_ms, candidate, False))

    def _districts(
        self,
        registry: dict[str, MeterRow],
        events: dict[str, list[MeterPoint]],
        rules: ElecRules,
        stamp: Stamp,
        start: int,
    ) -> tuple[dict[str, DistrictResult], dict[str, Decision]]:
        """Every district's balance and its meters' decisions, one district at a time:
        its readings are dropped once its meters are decided, so a pass holds one
        district's readings at a time (memory grows with meters, not readings)."""
        end = parse_ts(stamp.as_of)
        index = registry_districts(registry.values())
        names = set(index.members)
        names |= {s.district for s in self._state.all_seen("elec").values() if s.district}
        districts: dict[str, DistrictResult] = {}
        meters: dict[str, Decision] = {}
        upto = self.summary_sequence()
        for name in sorted(names):
            row = index.masters.get(name)
            dist = fit_district(
                name,
                self.district_series(name, start, end, upto),
                row.meter_id if row else None,
                rules,
                start,
                end,
                self._zone,
                row.accuracy_class if row else None,
                index.places.get(name),
            )
            for meter in sorted(set(dist.series) | set(index.members.get(name, ()))):
                meters[meter] = meter_decision(
                    meter, registry.get(meter), dist, events.get(meter, []), rules, stamp, None
                )
            districts[name] = dist = dist.without_series()  # (this name held them too)
        return districts, meters

    def summary_sequence(self) -> int:
        """The day marks' sequence number, read before any day of a pass is read: what a
        summary made from now on holds (see DaySummaries; 0 without summaries)."""
        return self._summaries.mark_sequence() if self._summaries is not None else 0

    def forget_summaries(self, as_of_ms: int, book: RuleBook) -> None:
        """Drop the day summaries more than `SUMMARY_MARGIN_DAYS` before the windows of a
        recorded pass as of `as_of_ms` (the estimation window for districts, the taxi
        window for taxi keys): no later pass reads them, and a backtest of up to that
        many days still finds all it reads (a longer one reads the older days from the
        store)."""
        if self._summaries is None:
            return
        elec = as_of_ms - int(book.rules.elec.estimation.window_days * DAY_MS)
        taxi = evaluate_taxi.window_start(as_of_ms, book.rules.taxi)
        self._summaries.forget_days(
            elec // DAY_MS - SUMMARY_MARGIN_DAYS, taxi // DAY_MS - SUMMARY_MARGIN_DAYS
        )

    def district_series(self, district: str, start: int, end: int, upto: int) -> dict[str, Series]:
        """A district's readings in [start, end]: from the day summaries and the days that
        changed, or all from the telemetry store (identical Series either way); `upto`
        is `summary_sequence()` as read before the pass's first read."""
        if self._summaries is None:
            return load_district(self._store, district, start, end)
        series, _ = load_district_days(
            self._store, self._summaries, district, start, end, upto, READING_FIELDS
        )
        return series

    def _lots(
        self,
        registry: dict[str, MeterRow],
        meters: dict[str, Decision],
        as_of_ms: int,
        book: RuleBook,
    ) -> dict[str, Decision]:
        members: dict[str, list[tuple[MeterRow, Decision]]] = defaultdict(list)
        for meter, row in registry.items():
            if row.lot and meter in meters:
                members[row.lot].append((row, meters[meter]))
        as_of_day = ms_to_datetime(as_of_ms).date()
        rules = book.rules.elec
        out = {}
        for lot, group in sorted(members.items()):
            sampling = self._sampling(lot)
            out[lot] = decide_lot(
                lot,
                group,
                as_of_day,
                rules.lot,
                rules.error_limit,
                sampling,
                Stamp(format_ts(as_of_ms), book.version),
                rules.estimation.confidence,
            )
        return out

    def _taxis(self, as_of_ms: int, book: RuleBook, stamp: Stamp) -> dict[str, Decision]:
        fares = self._taxi_fares
        rules = book.rules.taxi
        return evaluate_taxi.evaluate(
            self._store,
            self._state,
            self._tariffs(),
            rules,
            as_of_ms,
            stamp,
            fares=fares,
            summaries=self._summaries,
        )

    def _raise_alerts(
        self,
        meters: dict[str, Decision],
        lots: dict[str, Decision],
        districts: dict[str, DistrictResult],
        as_of_ms: int,
        estimation: EstimationRule,
    ) -> None:
        if self._alerts is None:
            return
        gates: dict[str, list[Reason]] = {
            n: d.gates.failures
            for n, d in districts.items()
            if d.gates is not None and d.gates.failures
        }
        for name, dist in districts.items():
            finding = misfit_reason(dist, estimation)
            if finding is not None:
                gates.setdefault(name, []).append(finding)
        conditions = conditions_of([*meters.values(), *lots.values()], as_of_ms)
        conditions += district_conditions(gates, as_of_ms)
        changes = self._alerts.observe(conditions, as_of_ms, EVALUATION_RULES)
        if self._notify is not None and changes:
            # One hand-over per pass: the notifier routes them in one transaction, and
            # `repeated` ones keep escalations current (they reach no receiver).
            self._notify(changes)

    def rejudge_lot(self, lot: str, book: RuleBook) -> Decision | None:
        """Re-decide one lot from its members' stored decisions (after sample results).

        The lot keeps the `as_of` of the pass that drew its sample: event time, not now.
        """
        previous = self._state.decision("lot", lot)
        if previous is None:
            return None
        members = []
        for row in self._state.registry_rows("elec"):
            body = self._state.decision("meter", row.meter_id) if row.lot == lot else None
            if body is not None:
                members.append((row, decision_from_dict(body)))
        as_of_ms = parse_ts(previous["as_of"])
        rules = book.rules.elec
        decided = decide_lot(
            lot,
            members,
            ms_to_datetime(as_of_ms).date(),
            rules.lot,
            rules.error_limit,
            self._sampling(lot),
            Stamp(previous["as_of"], book.version),
            rules.estimation.confidence,
        )
        self._state.save_decisions("lot", [stamped(decided)])
        return decided

    def _sampling(self, lot: str) -> Sampling | None:
        previous = self._state.decision("lot", lot)
        if not previous or "plan" not in previous or not previous.get("due_on"):
            return None
        results = [
            SampleResult(m, e, p)
            for m, e, p in self._state.sample_results(lot)
            if m in set(previous["drawn"])
        ]
        if not results:
            return None  # nothing measured yet: the plan is re-derived (same seed, same draw)
        return Sampling(previous["due_on"], previous["plan"], previous["drawn"], results)

    def _record(
        self,
        meters: dict[str, Decision],
        lots: dict[str, Decision],
        districts: dict[str, DistrictResult],
        stamp: Stamp,
    ) -> None:
        meter_bodies = [stamped(d) for d in meters.values()]
        self._state.save_decisions("meter", meter_bodies)
        self._state.save_decisions("lot", [stamped(d) for d in lots.values()])
        for name, dist in districts.items():
            self._state.save_district(name, stamp.as_of, dist.report(meters, stamp))
        if self._publish is not None:
            for body in meter_bodies:
                self._publish(f"{body['kind']}/{body['id']}", body)


def stamped(decision: Decision) -> dict[str, Any]:
    """A decision's JSON with the software version that made it (the rules version is
    already in it): what is stored, published and shown."""
    return {**decision.as_dict(), "software_version": __version__}


def decision_publisher(publish: Publisher, root: str) -> Publish:
    """The `publish` of an Evaluator: each decision retained on `{root}/{kind}/{meter}`."""

    def publish_decision(suffix: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        try:
            publish(f"{root}/{suffix}", payload, True)
        except ConnectionError as exc:
            # Decisions are stored; the retained copy is refreshed by the next pass.
            log.warning("decision not published: %s", exc)

    return publish_decision


def future_as_of(as_of_ms: int, now_ms: int) -> str | None:
    """Why an `as_of` after the receive clock is refused, or None when it is not.

    Validation against the present (a request), not a decision: every pass still
    runs on the `as_of` it is given.
    """
    if as_of_ms <= now_ms:
        return None
    return (
        f"as_of {format_ts(as_of_ms)} is after the receive clock ({format_ts(now_ms)}): "
        "a pass in the future finds every meter silent and every district's data "
        "incomplete, and clears every alert; pass force=true to evaluate it anyway"
    )
