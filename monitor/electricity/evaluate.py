"""The electricity half of a pass: a district's readings in (`load_district`), its energy
balance and every meter's decision out (`fit_district`, `meter_decision`: pure).

The evaluation runner (evaluation/runner.py) reads, calls these per district, decides
lots across districts, and records; nothing here reads a clock or writes anything.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, tzinfo
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS, parse_ts
from monitor.core.decision import (
    Decision,
    Finding,
    Reason,
    Stamp,
    decide_meter,
    severity_for,
)
from monitor.core.ports import MeterPoint, Series, TelemetryStore
from monitor.core.registry import MeterRow
from monitor.core.rulebook import ElecRules, EstimationRule
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

READING_FIELDS = ("energy_kwh", "reverse_kwh", "current_a", "voltage_v", "clock_offset_s")


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
    # The meters with readings in the window (sorted); kept when `series` is dropped.
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.series and not self.members:
            self.members = tuple(sorted(self.series))

    def without_series(self) -> DistrictResult:
        """This result without its readings, once its meters are decided: what a pass
        keeps of each district (the readings are ~30 MB for 100 meters × 60 days; the
        rest is O(meters))."""
        return replace(self, series={})

    def report(self, decisions: dict[str, Decision], stamp: Stamp) -> dict[str, Any]:
        """The JSON of `GET /api/districts/{district}`."""
        fit, gates = self.fit, self.gates
        meters = []
        for meter in self.members:
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
            "as_of": stamp.as_of,
            "rules_version": stamp.rules_version,
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
    learnt = _voltage_topology(placed, master, blk)
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


def _voltage_topology(placed: Placed, master: str, blk: Blocks) -> NDArray[np.float64] | None:
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


def misfit_reason(dist: DistrictResult, rule: EstimationRule) -> Reason | None:
    """The district's misfit as a district reason (and alert), when its gates passed.

    Structure in the residuals that the plain loss model cannot explain is a finding
    about the area (an unmetered night load, losses that drift, a feeder whose branches
    carry different losses), not only wider intervals on its meters: an incident of the
    district, at the estimation rule's severity (`severity_for`, as a suspect finding).
    """
    fit, gates = dist.fit, dist.gates
    if fit is None or not fit.misfit or gates is None or not gates.passed:
        return None
    return Reason(
        "elec.estimation.misfit",
        fit.loss_model,
        list(fit.plausible_models),
        fit.misfit,
        severity_for("suspect", False, rule.severity),
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
    stamp: Stamp,
    lot_new_due_on: date | None,
) -> Decision:
    """All electricity rules for one meter, combined into its decision."""
    if dist.members and not dist.series:
        raise ValueError(f"district {dist.district}: its readings were dropped before {meter}")
    series = dist.series.get(meter)
    findings: list[Finding] = []
    findings += rules_elec.function_findings(series, rules.function_failure, meter == dist.master)
    as_of_ms = parse_ts(stamp.as_of)
    window_start = as_of_ms - int(rules.estimation.window_days * DAY_MS)
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
        meter, "elec", findings, row.due_on if row else None, lot_new_due_on, evidence, stamp
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


def load_district(
    store: TelemetryStore, district: str, start_ms: int, end_ms: int
) -> dict[str, Series]:
    """Every meter's readings of one district in [start, end] (the only read a district needs)."""
    return store.series(ELEC_READING, READING_FIELDS, start_ms, end_ms, district=district)


def load_events(store: TelemetryStore, start_ms: int, end_ms: int) -> dict[str, list[MeterPoint]]:
    """Electricity meter events in [start, end], by meter."""
    return _by_meter(store.points(ELEC_EVENT, start_ms, end_ms))
