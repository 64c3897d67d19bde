"""One evaluation pass as of a time: districts → meters → lots → stored decisions.

Everything here is a function of the telemetry up to `as_of` and of the rules:
the window is [as_of − window_days, as_of], nothing reads the wall clock, so a
replay of last year's data gives last year's answers.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, tzinfo
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.alerts.book import AlertBook, Change, conditions_of, district_conditions
from monitor.core.clock import format_ts, ms_to_datetime, parse_ts
from monitor.core.decision import Decision, Finding, Reason, decide_meter, decision_from_dict
from monitor.core.ports import MeterPoint, Series, StateStore, TelemetryStore
from monitor.core.registry import MeterRow
from monitor.core.rulebook import ElecRules, RuleBook
from monitor.core.schema import ELEC_EVENT, ELEC_READING
from monitor.electricity import rules as rules_elec
from monitor.electricity.balance import (
    DailyLoss,
    DistrictFit,
    FeederPlace,
    FitConfig,
    MeterEstimate,
    Topology,
    daily_line_loss,
    day_hours,
    fit_balance,
    registry_topology,
    shared_resistance,
)
from monitor.electricity.intervals import (
    Blocks,
    Grid,
    MeterSeries,
    Placed,
    blocks,
    place_on_grid,
    place_values,
    without_stopped,
)
from monitor.electricity.lots import SampleResult, Sampling, decide_lot
from monitor.taxi import evaluate as evaluate_taxi
from monitor.taxi.fares import FareCache
from monitor.taxi.tariff import TariffBook

log = logging.getLogger(__name__)
READING_FIELDS = ("energy_kwh", "reverse_kwh", "current_a", "voltage_v", "clock_offset_s")
Publish = Callable[[str, dict[str, Any]], None]
# Rule families an evaluation pass speaks for (it may clear their alerts).
EVALUATION_RULES = ("elec.", "taxi.", "lot.")


@dataclass
class DistrictResult:
    """The energy balance of one district and what it says of each meter."""

    district: str
    master: str | None
    gates: rules_elec.Gates | None
    fit: DistrictFit | None
    estimates: dict[str, MeterEstimate] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    note: str = ""
    stopped_intervals: dict[str, int] = field(default_factory=dict)
    daily_loss: list[DailyLoss] = field(default_factory=list)

    def report(self, decisions: dict[str, Decision], as_of: str, version: str) -> dict[str, Any]:
        """The JSON of `GET /api/districts/{district}`."""
        fit, gates = self.fit, self.gates
        meters = []
        for meter in sorted(self.series):
            est = self.estimates.get(meter)
            d = decisions.get(meter)
            meters.append(
                {
                    "meter": meter,
                    "role": "master" if meter == self.master else "customer",
                    "error_pct": _r(est.error_pct) if est else None,
                    "error_ci_pct": [_r(v) for v in est.error_ci_pct] if est else None,
                    "information_ratio": _r(est.information_ratio) if est else None,
                    "evaluable": bool(d and d.evidence.get("evaluable")),
                    "state": d.state if d else None,
                    "decision": d.decision if d else None,
                }
            )
        return {
            "district": self.district,
            "as_of": as_of,
            "rules_version": version,
            "master": self.master,
            "note": self.note,
            "gates": None
            if gates is None
            else {
                "passed": gates.passed,
                "completeness": _r(gates.completeness),
                "interval_completeness": _r(gates.interval_completeness),
                "n_intervals": gates.n_intervals,
                "line_loss_pct": _r(gates.line_loss_pct),
                "failures": [r.as_dict() for r in gates.failures],
            },
            "fit": None
            if fit is None
            else {
                "fixed_loss_kw": _r(fit.fixed_loss_kw),
                "i2r_gamma_per_kw": fit.gamma_per_kw,
                "line_loss_pct": _r(fit.line_loss_pct),
                "residual_rms_pct": _r(fit.residual_rms_pct),
                "residual_autocorrelation": _r(fit.residual_autocorrelation),
                "r_squared": _r(fit.r_squared, 6),
                "n_blocks": fit.n_blocks,
                "n_intervals": fit.n_intervals,
                "effective_intervals": _r(fit.effective_intervals, 1),
                "loss_model": fit.loss_model,
                "loss_kappa": fit.kappa,
                "plausible_loss_models": list(fit.plausible_models),
                "misfit": fit.misfit or None,
                "master_uncertainty_pct": _r(fit.master_uncertainty_pct),
            },
            "stopped_intervals_left_out": self.stopped_intervals,
            "line_loss_daily": [
                {
                    "day": d.day.isoformat(),
                    "line_loss_pct": _r(d.loss_pct),
                    "supplied_kwh": _r(d.supplied_kwh, 3),
                    "intervals": d.intervals,
                }
                for d in self.daily_loss
            ],
            "meters": meters,
        }


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or value != value:  # NaN has no JSON
        return None
    return round(float(value), digits)


def fit_district(
    district: str,
    series: dict[str, Series],
    master: str | None,
    rules: ElecRules,
    start_ms: int,
    end_ms: int,
    zone: tzinfo = UTC,
    master_class: str | None = None,
    places: Mapping[str, FeederPlace] | None = None,
) -> DistrictResult:
    """Place readings on the grid, form blocks, fit the balance, check the gates.

    `zone` sets where the days of the daily line loss begin (the utility's local day)
    and the quarters of the day a night load is looked for in; `master_class` (the
    registry's) sets the master's Type B uncertainty unless the rules fix it.
    `places` (the registry's `feeder_branch`, `feeder_distance_m` per meter) adds the
    loss model that puts each household's loss where its cable is; the meters' own
    voltages add another; the data choose between them and the plain ones.
    """
    if master is None or master not in series:
        note = (
            "no registered master meter" if master is None else "no readings from the master meter"
        )
        return DistrictResult(district, master, None, None, series=series, note=note)
    est = rules.estimation
    step = est.interval_s * 1000
    # The grid starts where the district's data starts: a district that began
    # reporting last week is judged on last week (min_intervals guards the length),
    # not held incomplete for the weeks before it existed.
    first = min((int(s.ts_ms[0]) for s in series.values() if len(s.ts_ms)), default=start_ms)
    grid = Grid.covering(max(start_ms, first - step // 6), end_ms, step, step // 6)
    meter_series = {
        m: MeterSeries(
            s.ts_ms,
            s.values["energy_kwh"],
            voltage_v=s.column("voltage_v"),
            reverse_kwh=s.column("reverse_kwh"),
        )
        for m, s in series.items()
    }
    placed = place_on_grid(meter_series, grid)
    blk = blocks(placed, master, grid)
    ff = rules.function_failure
    currents = {
        m: place_values(s.ts_ms, current, grid)
        for m, s in series.items()
        if m != master
        and (current := s.column("current_a")) is not None
        and rules_elec.is_stopped(s, ff)
    }
    blk = without_stopped(blk, grid, currents, ff.stopped_min_current_a)
    cfg = FitConfig(
        est.forgetting_meter,
        est.ridge,
        est.confidence,
        est.interval_s / 3600,
        master_uncertainty_pct(rules, master_class),
    )
    topologies = []
    told = registry_topology(blk.meters, places) if places else None
    if told is not None:
        topologies.append(told)
    learnt = _voltage_topology(placed, master, blk, est.interval_s / 3600)
    if learnt is not None:
        topologies.append(Topology("voltages", shared_ohm=learnt))
    fit = fit_balance(blk, cfg, day_hours(blk, grid, zone), topologies=topologies)
    gates = rules_elec.district_gates(placed, grid, blk, fit, est)
    estimates = fit.meters if fit is not None else {}
    daily = daily_line_loss(blk, grid, zone)
    return DistrictResult(
        district,
        master,
        gates,
        fit,
        estimates,
        series,
        daily_loss=daily,
        stopped_intervals=blk.stopped_intervals,
    )


def _voltage_topology(
    placed: Placed, master: str, blk: Blocks, step_hours: float
) -> NDArray[np.float64] | None:
    """The feeder's shared resistances as the meters' voltages tell them (`shared_resistance`)."""
    volts = placed.voltages
    if volts is None or blk.intervals is None or not blk.meters:
        return None
    where = {m: i for i, m in enumerate(placed.meters)}
    columns = [where[m] for m in blk.meters]
    return shared_resistance(blk.intervals, volts, volts[:, where[master]], columns)


def master_uncertainty_pct(rules: ElecRules, master_class: str | None) -> float:
    """Type B standard uncertainty of the master's error: the rules' figure, else MPE/√3.

    Every customer estimate is relative to the master, so its error is common to the
    whole district; the class says only that it lies within ±MPE (a rectangular
    distribution, GUM 4.3.7).
    """
    est = rules.estimation
    if est.master_uncertainty_pct is not None:
        return est.master_uncertainty_pct
    mpe = rules.error_limit.verification_mpe_pct
    value = mpe.get(master_class or est.master_class, mpe.get(est.master_class, 0.5))
    return value / math.sqrt(3.0)


def misfit_reason(dist: DistrictResult) -> Reason | None:
    """The district's misfit as a district reason (and alert), when its gates passed.

    Structure in the residuals that the plain loss model cannot explain is a finding
    about the area (an unmetered night load, losses that drift, a feeder whose branches
    carry different losses), not only wider intervals on its meters.
    """
    fit, gates = dist.fit, dist.gates
    if fit is None or not fit.misfit or gates is None or not gates.passed:
        return None
    return Reason("elec.estimation.misfit", fit.loss_model, list(fit.plausible_models), fit.misfit)


@dataclass
class EvaluationResult:
    """What a pass decided."""

    as_of: str
    rules_version: str
    meters: dict[str, Decision]
    lots: dict[str, Decision]
    districts: dict[str, DistrictResult]

    def summary(self) -> dict[str, Any]:
        """Counts by decision and state, for the API and the CLI."""

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
    ) -> None:
        self._zone = zone
        # Fare checks carried from one pass to the next (exact: see FareCache).
        self._taxi_fares = FareCache()
        self._alerts = alerts
        self._notify = notify
        self._store = store
        self._state = state
        self._publish = publish
        self._tariffs = tariffs or TariffBook
        self._lock = threading.Lock()  # one pass at a time (scheduler and API)

    def tariffs(self) -> TariffBook:
        """The tariffs trips are priced under: config plus every rollout."""
        return evaluate_taxi.tariff_book(self._tariffs(), self._state)

    def default_as_of(self) -> int | None:
        """The latest telemetry time seen, or None before any telemetry."""
        return self._state.latest_event_ts()

    def run(self, as_of_ms: int, book: RuleBook, record: bool = True) -> EvaluationResult:
        """Evaluate every electricity meter and lot as of `as_of_ms`.

        `record=False` is a dry run (backtests): nothing is stored or published.
        """
        with self._lock:
            return self._run(as_of_ms, book, record)

    def _run(self, as_of_ms: int, book: RuleBook, record: bool) -> EvaluationResult:
        rules = book.rules.elec
        as_of = format_ts(as_of_ms)
        start = as_of_ms - int(rules.estimation.window_days * 86_400_000)
        registry = {r.meter_id: r for r in self._state.registry_rows("elec")}
        lookback = max(rules.tamper.lookback_days, rules.hardware.lookback_days) * 86_400_000
        events = _by_meter(
            self._store.points(ELEC_EVENT, min(start, as_of_ms - int(lookback)), as_of_ms)
        )
        districts = self._districts(registry, rules, start, as_of_ms)
        stamp = (as_of, book.version)
        meters = self._meters(registry, districts, events, rules, stamp, lot_extension={})
        lots = self._lots(registry, meters, as_of_ms, book)
        extended = {lot: d.new_due_on for lot, d in lots.items() if d.decision == "extend"}
        if extended:
            meters = self._meters(registry, districts, events, rules, stamp, extended)
        meters |= self._taxis(as_of_ms, book, stamp)
        if record:
            self._record(meters, lots, districts, stamp)
            self._raise_alerts(meters, lots, districts, as_of_ms, book)
        return EvaluationResult(as_of, book.version, meters, lots, districts)

    def _districts(
        self, registry: dict[str, MeterRow], rules: ElecRules, start: int, end: int
    ) -> dict[str, DistrictResult]:
        names = {r.district for r in registry.values() if r.district}
        names |= {s.district for s in self._state.all_seen("elec").values() if s.district}
        masters = {r.district: r for r in registry.values() if r.effective_role == "master"}
        places: dict[str, dict[str, FeederPlace]] = defaultdict(dict)
        for r in registry.values():
            if r.district and r.feeder_branch:
                places[r.district][r.meter_id] = FeederPlace(r.feeder_branch, r.feeder_distance_m)
        out = {}
        for name in sorted(names):
            series = self._store.series(ELEC_READING, READING_FIELDS, start, end, district=name)
            row = masters.get(name)
            out[name] = fit_district(
                name,
                series,
                row.meter_id if row else None,
                rules,
                start,
                end,
                self._zone,
                row.accuracy_class if row else None,
                places.get(name),
            )
        return out

    def _meters(
        self,
        registry: dict[str, MeterRow],
        districts: dict[str, DistrictResult],
        events: dict[str, list[MeterPoint]],
        rules: ElecRules,
        stamp: tuple[str, str],
        lot_extension: dict[str, date | None],
    ) -> dict[str, Decision]:
        out = {}
        for dist in districts.values():
            for meter in sorted(
                set(dist.series) | {m for m, r in registry.items() if r.district == dist.district}
            ):
                row = registry.get(meter)
                ext = lot_extension.get(row.lot) if row is not None and row.lot else None
                out[meter] = meter_decision(
                    meter, row, dist, events.get(meter, []), rules, stamp, ext
                )
        return out

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
                (format_ts(as_of_ms), book.version),
            )
        return out

    def _taxis(self, as_of_ms: int, book: RuleBook, stamp: tuple[str, str]) -> dict[str, Decision]:
        fares = self._taxi_fares
        rules = book.rules.taxi
        return evaluate_taxi.evaluate(
            self._store, self._state, self._tariffs(), rules, as_of_ms, stamp, fares=fares
        )

    def _raise_alerts(
        self,
        meters: dict[str, Decision],
        lots: dict[str, Decision],
        districts: dict[str, DistrictResult],
        as_of_ms: int,
        book: RuleBook,
    ) -> None:
        if self._alerts is None:
            return
        gates: dict[str, list[Reason]] = {
            n: d.gates.failures
            for n, d in districts.items()
            if d.gates is not None and d.gates.failures
        }
        for name, dist in districts.items():
            finding = misfit_reason(dist)
            if finding is not None:
                gates.setdefault(name, []).append(finding)
        conditions = conditions_of([*meters.values(), *lots.values()], book.rules, as_of_ms)
        conditions += district_conditions(gates, book.rules, as_of_ms)
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
            (previous["as_of"], book.version),
        )
        self._state.save_decisions("lot", [decided.as_dict()])
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
        stamp: tuple[str, str],
    ) -> None:
        meter_bodies = [d.as_dict() for d in meters.values()]
        self._state.save_decisions("meter", meter_bodies)
        self._state.save_decisions("lot", [d.as_dict() for d in lots.values()])
        for name, dist in districts.items():
            self._state.save_district(name, stamp[0], dist.report(meters, *stamp))
        if self._publish is not None:
            for body in meter_bodies:
                self._publish(f"{body['kind']}/{body['id']}", body)


def decision_publisher(publish: Callable[[str, bytes, bool], None], root: str) -> Publish:
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


def _by_meter(points: list[MeterPoint]) -> dict[str, list[MeterPoint]]:
    out: dict[str, list[MeterPoint]] = defaultdict(list)
    for p in points:
        out[p.meter].append(p)
    return out


def meter_decision(
    meter: str,
    row: MeterRow | None,
    dist: DistrictResult,
    events: list[MeterPoint],
    rules: ElecRules,
    stamp: tuple[str, str],
    lot_new_due_on: date | None,
) -> Decision:
    """All electricity rules for one meter, combined into its decision."""
    series = dist.series.get(meter)
    findings: list[Finding] = []
    findings += rules_elec.function_findings(series, rules.function_failure, meter == dist.master)
    as_of_ms = parse_ts(stamp[0])
    window_start = as_of_ms - int(rules.estimation.window_days * 86_400_000)
    recent = [e for e in events if e.ts_ms >= window_start]
    findings += rules_elec.clock_findings(series, recent, rules.clock)
    findings += rules_elec.event_findings(events, rules.tamper, rules.hardware, as_of_ms)
    est = dist.estimates.get(meter)
    current = rules_elec.mean_current_a(
        series, rules.function_failure.un_v, rules.estimation.interval_s / 3600
    )
    if meter == dist.master:
        findings.append(rules_elec.master_finding(dist.gates))
    elif dist.gates is None:
        findings.append(rules_elec.no_balance_finding(dist.note))
    else:
        findings += rules_elec.estimate_findings(
            est,
            row.accuracy_class if row else None,
            current,
            dist.gates,
            rules,
            dist.fit.misfit if dist.fit is not None else "",
        )
    evaluable = any(f.reason.rule.startswith("elec.error_limit") for f in findings)
    evidence = _evidence(dist, est, current, evaluable, row)
    return decide_meter(
        meter, "elec", findings, row.due_on if row else None, lot_new_due_on, evidence, *stamp
    )


def _evidence(
    dist: DistrictResult,
    est: MeterEstimate | None,
    current: float | None,
    evaluable: bool,
    row: MeterRow | None,
) -> dict[str, Any]:
    gates = dist.gates
    estimate = (
        None
        if est is None
        else {
            "error_pct": _r(est.error_pct),
            "error_ci_pct": [_r(v) for v in est.error_ci_pct],
            "error_ci_relative_pct": [_r(v) for v in est.relative_ci_pct],
        }
    )
    return {
        # An estimate that cannot carry a judgement is not shown as the meter's error.
        "error_pct": estimate["error_pct"] if estimate and evaluable else None,
        "error_ci_pct": estimate["error_ci_pct"] if estimate and evaluable else None,
        # The interval without the master's Type B (common to the district): how well the
        # data resolve this meter against the master; `error_ci_pct` is the absolute one.
        "error_ci_relative_pct": estimate["error_ci_relative_pct"]
        if estimate and evaluable
        else None,
        "unresolved_estimate": estimate if estimate and not evaluable else None,
        "n_intervals": est.n_intervals if est else (gates.n_intervals if gates else 0),
        "evaluable": evaluable,
        "information_ratio": _r(est.information_ratio) if est else None,
        # The estimate under every loss model the data cannot reject (lowest, highest).
        "loss_model_range_pct": [_r(v) for v in est.model_range_pct] if est else None,
        "confounded_with": list(est.confounded_with) if est and est.confounded_with else None,
        "loss_model_misfit": (dist.fit.misfit or None) if dist.fit is not None else None,
        "mean_current_a": _r(current),
        "district": dist.district,
        "district_gates_passed": gates.passed if gates else False,
        "line_loss_pct": _r(gates.line_loss_pct) if gates else None,
        "completeness": _r(gates.completeness) if gates else None,
        "registered": row is not None,
        "lot": row.lot if row else None,
    }
