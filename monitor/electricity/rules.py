"""Electricity meter rules: estimated error, function failures, clock, events.

Each function takes data and a rule block of `rules.yaml` and returns findings;
none of them reads a clock, a store or a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.core.clock import DAY_MS, HOUR_MS, format_ts
from monitor.core.decision import Finding, Reason, severity_for
from monitor.core.ports import MeterPoint, Series
from monitor.core.rulebook import (
    ClockRule,
    ElecRules,
    EstimationRule,
    EventRule,
    FunctionFailureRule,
    Severity,
)
from monitor.electricity.balance import DistrictFit, MeterEstimate
from monitor.electricity.intervals import Blocks, Grid, Placed


@dataclass(frozen=True)
class Gates:
    """Whether a district's data can carry an error estimate (docs/metrology.md, data gates)."""

    passed: bool
    completeness: float  # meter-days collected (the gate)
    interval_completeness: float  # grid readings received (evidence)
    n_intervals: int
    line_loss_pct: float
    failures: list[Reason]


def district_gates(
    placed: Placed, grid: Grid, blocks: Blocks, fit: DistrictFit | None, rule: EstimationRule
) -> Gates:
    """Completeness, interval count, line-loss band, residual structure; every failure is
    a reason.

    Only a line loss outside its band and residuals that follow each other carry an alert
    severity (incidents of the area: topology, theft, an unmetered load): the other gates
    fail for too little data (shown on the district's page, not alerted).
    """
    loss = fit.line_loss_pct if fit is not None else float("nan")
    completeness = placed.daily_completeness(grid)
    failures = []
    if completeness < rule.min_completeness:
        failures.append(
            Reason(
                "elec.estimation.completeness",
                round(completeness, 4),
                rule.min_completeness,
                "district collection below the minimum",
            )
        )
    if blocks.n_intervals < rule.min_intervals:
        stopped = ", ".join(
            f"{m} ({n} intervals)" for m, n in sorted(blocks.stopped_intervals.items())
        )
        failures.append(
            Reason(
                "elec.estimation.min_intervals",
                blocks.n_intervals,
                rule.min_intervals,
                "too few usable intervals in the window"
                + (
                    f"; left out because a meter stood still while current flowed: {stopped}"
                    if stopped
                    else ""
                ),
            )
        )
    if fit is None:
        failures.append(
            Reason(
                "elec.estimation.solvable",
                len(blocks.master),
                len(blocks.meters) + 2,
                "fewer interval groups than unknowns",
            )
        )
    elif not rule.line_loss_min_pct <= loss <= rule.line_loss_max_pct:
        failures.append(
            Reason(
                "elec.estimation.line_loss",
                round(loss, 3),
                [rule.line_loss_min_pct, rule.line_loss_max_pct],
                "line loss outside the plausible band: topology or theft is the "
                "likelier cause, every estimate in the district is suspect",
                # The one failed gate that is an incident; the others say "too little data".
                severity_for("suspect", False, rule.severity),
            )
        )
    structure = fit.residual_autocorrelation if fit is not None else float("nan")
    if structure > rule.max_residual_autocorrelation:
        failures.append(
            Reason(
                "elec.estimation.residual_structure",
                round(structure, 3),
                rule.max_residual_autocorrelation,
                "the balance's residuals follow each other: a slowly changing component no "
                "loss model describes (an unmetered load, losses the models do not follow) "
                "would be absorbed by the meters whose load looks like it"
                + (f"; {fit.misfit}" if fit is not None and fit.misfit else ""),
                # An incident of the area, as the line loss is: something draws unmetered.
                severity_for("suspect", False, rule.severity),
            )
        )
    return Gates(
        not failures, completeness, placed.completeness, blocks.n_intervals, loss, failures
    )


def mean_current_a(series: Series | None, un_v: float, step_hours: float) -> float | None:
    """Mean current from reported current, else from energy over time at nominal voltage."""
    if series is None or len(series.ts_ms) < 2:
        return None
    current = series.values.get("current_a")
    if current is not None:
        mean = float(current.mean())
        if not math.isnan(mean):  # every current read (the usual case): no NaN-aware copy
            return mean
        read = current[~np.isnan(current)]
        if len(read):
            return float(read.mean())
    energy = series.values["energy_kwh"]
    hours = (series.ts_ms[-1] - series.ts_ms[0]) / HOUR_MS
    if hours <= 0:
        return None
    return float((energy[-1] - energy[0]) / hours * 1000 / un_v)


def estimate_findings(
    est: MeterEstimate | None,
    accuracy_class: str | None,
    current_a: float | None,
    gates: Gates,
    rules: ElecRules,
    misfit: str = "",
) -> list[Finding]:
    """The error-limit judgement, or an honest `unknown` when the estimate cannot carry one.

    `misfit` is the district's finding that its residuals have structure the plain loss
    model cannot explain (`DistrictFit.misfit`); it is named where it decides a meter.
    """
    rule, lim = rules.estimation, rules.error_limit
    if est is None:
        return [
            Finding(
                "unknown",
                Reason(
                    "elec.estimation", None, None, "no estimate: no data in a balanced district"
                ),
            )
        ]
    if not gates.passed:
        return [
            Finding(
                "unknown",
                Reason(
                    "elec.estimation.gates",
                    [r.rule for r in gates.failures],
                    "all gates",
                    "district data gates failed: " + "; ".join(r.detail for r in gates.failures),
                ),
            )
        ]
    unobservable = _unobservable(est, current_a, rule)
    if unobservable is not None:
        return [Finding("unknown", unobservable)]
    limit = lim.in_service_limit_pct.get(accuracy_class or "")
    if limit is not None:
        undecided = _loss_model_decides(est, limit, lim.watch_fraction, misfit)
        if undecided is not None:
            return [Finding("unknown", undecided)]
    if limit is None:
        return [
            Finding(
                "normal",
                Reason(
                    "elec.error_limit",
                    round(est.error_pct, 3),
                    None,
                    f"no in-service limit for class {accuracy_class}",
                ),
            )
        ]
    return [_judge_error(est, limit, lim.watch_fraction, lim.severity)]


def _band(error: float, limit: float, watch_fraction: float) -> str:
    size = abs(error)
    return "beyond" if size > limit else ("watch" if size > watch_fraction * limit else "normal")


def _loss_model_decides(
    est: MeterEstimate, limit: float, watch_fraction: float, misfit: str
) -> Reason | None:
    """`unknown` when loss models the data cannot reject put the estimate in different bands.

    The point estimate comes from one loss model; if another plausible one moves it across
    the watch line or the limit, the state would be the loss model's choice, not the
    meter's: never `normal` (and an extension) on an estimate a plausible model puts beyond.
    """
    low, high = est.model_range_pct
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    bands = {_band(v, limit, watch_fraction) for v in (low, high, est.error_pct)}
    if len(bands) == 1:
        return None
    return Reason(
        "elec.estimation.loss_model",
        [round(low, 3), round(high, 3)],
        [round(watch_fraction * limit, 3), limit],
        "plausible loss models put the estimate on both sides of a decision line"
        + (f"; {misfit}" if misfit else ""),
    )


def _confounded(est: MeterEstimate) -> str:
    if not est.confounded_with:
        return ""
    return "; confounded with " + ", ".join(est.confounded_with)


def _unobservable(
    est: MeterEstimate, current_a: float | None, rule: EstimationRule
) -> Reason | None:
    min_current = rule.min_load_fraction_ib * rule.ib_a
    if current_a is not None and current_a < min_current:
        return Reason(
            "elec.estimation.light_load",
            round(current_a, 3),
            min_current,
            "mean current below the class range: error not resolvable",
        )
    if est.max_correlation > rule.max_correlation:
        return Reason(
            "elec.estimation.collinear",
            round(est.max_correlation, 4),
            rule.max_correlation,
            "load too like another meter's to tell their errors apart" + _confounded(est),
        )
    if est.information_ratio < rule.min_information_ratio:
        return Reason(
            "elec.estimation.observability",
            round(est.information_ratio, 2),
            rule.min_information_ratio,
            "consumption too small or too like its neighbours' to resolve" + _confounded(est),
        )
    # The meter's own resolution, without the master's Type B: the master's class is one
    # uncertainty for the whole district (in every absolute interval the limit is judged
    # on), not a reason this meter cannot be told apart from its neighbours.
    half = est.relative_halfwidth_pct
    if not math.isfinite(half) or half > rule.max_ci_halfwidth_pct:
        return Reason(
            "elec.estimation.ci_width",
            round(half, 3) if math.isfinite(half) else None,
            rule.max_ci_halfwidth_pct,
            "confidence interval against the district's master too wide to judge"
            + _confounded(est),
        )
    return None


def _judge_error(
    est: MeterEstimate, limit: float, watch_fraction: float, severity: Severity
) -> Finding:
    low, high = est.error_ci_pct
    value = round(est.error_pct, 3)
    if high < -limit or low > limit:
        return Finding(
            "suspect",
            Reason(
                "elec.error_limit",
                value,
                limit,
                f"estimated error beyond ±{limit} % with its 95 % interval clear of the limit "
                "(preliminary: on-site check)",
            ),
            rule_severity=severity,
        )
    if abs(est.error_pct) > watch_fraction * limit:
        return Finding(
            "watch",
            Reason(
                "elec.error_limit.watch",
                value,
                round(watch_fraction * limit, 3),
                "estimated error in the warning band",
            ),
            rule_severity=severity,
        )
    return Finding(
        "normal", Reason("elec.error_limit", value, limit, "within the in-service limit")
    )


def function_findings(
    series: Series | None, rule: FunctionFailureRule, master: bool = False
) -> list[Finding]:
    """Running backwards, stopped, running fast (JJF(冀)174-2020 Annex A).

    A master meter carries a whole area through current transformers, so the
    household Imax of the running-fast check does not apply to it.
    """
    if series is None or len(series.ts_ms) < 2:
        return []
    out = []
    checks = (_backwards, _stopped) if master else (_backwards, _stopped, _fast)
    for check in checks:
        finding = check(series, rule)
        if finding is not None:
            out.append(finding)
    return out


def _backwards(series: Series, rule: FunctionFailureRule) -> Finding | None:
    energy = series.values["energy_kwh"]
    steps = np.diff(energy)
    drops = np.flatnonzero(steps < -rule.backwards_tolerance_kwh)
    if len(drops) == 0:
        return None
    i = int(drops[0])
    before, after = float(energy[i]), float(energy[i + 1])
    if after <= 0.01 * before:  # back to ~0: a reset or rollover, not energy running backwards
        return Finding(
            "watch",
            Reason(
                "elec.function_failure.reset",
                after,
                before,
                f"register reset at {format_ts(int(series.ts_ms[i + 1]))}; not summed across",
            ),
            rule_severity=rule.severity,
        )
    return Finding(
        "faulty",
        Reason(
            "elec.function_failure.backwards",
            round(after - before, 4),
            -rule.backwards_tolerance_kwh,
            f"forward register decreased at {format_ts(int(series.ts_ms[i + 1]))}",
        ),
        rule_severity=rule.severity,
    )


def is_stopped(series: Series, rule: FunctionFailureRule) -> bool:
    """Whether the stopped-meter check fires on this series."""
    return _stopped(series, rule) is not None


def _stopped(series: Series, rule: FunctionFailureRule) -> Finding | None:
    energy = series.values["energy_kwh"]
    standing = np.diff(energy) == 0
    if not standing.any():  # the register moved in every interval: nothing to look at
        return None
    current = series.column("current_a")
    if current is None:
        return None
    voltage = series.column("voltage_v")
    if voltage is None:
        voltage = np.full(len(current), rule.un_v)
    volts = np.where(np.isnan(voltage), rule.un_v, voltage)
    hours = np.diff(series.ts_ms) / HOUR_MS
    flowing = np.minimum(current[1:], current[:-1]) > rule.stopped_min_current_a
    still = standing & flowing
    reverse = series.column("reverse_kwh")
    if reverse is not None:  # a prosumer exporting: its current feeds the reverse register
        still &= ~(np.diff(reverse) > 0)
    implied = np.where(still, current[1:] * volts[1:] * hours / 1000, 0.0)
    best = _longest_run_sum(still, implied)
    if best < rule.stopped_min_energy_kwh:
        return None
    return Finding(
        "faulty",
        Reason(
            "elec.function_failure.stopped",
            round(best, 3),
            rule.stopped_min_energy_kwh,
            "register unchanged while current flowed (kWh implied by "
            "current × voltage over the stopped run)",
        ),
        rule_severity=rule.severity,
    )


def _longest_run_sum(mask: np.ndarray, values: np.ndarray) -> float:
    """Largest sum of `values` over a run of consecutive True in `mask` (vectorised)."""
    if len(mask) == 0:
        return 0.0
    total = np.cumsum(np.where(mask, values, 0.0))
    run = total - np.maximum.accumulate(np.where(mask, 0.0, total))
    return float(max(run.max(), 0.0))


def _fast(series: Series, rule: FunctionFailureRule) -> Finding | None:
    ts, energy = series.ts_ms, series.values["energy_kwh"]
    limit = rule.imax_a * rule.un_v * 24 / 1000
    # A window spans a day or more, so its energy per day is at most what its register
    # moved, which is at most the register's whole range in the window: most meters are
    # cleared by their range alone. Else: every window's energy per day is a mean of the
    # rates between its readings, so none can exceed the largest rate.
    if len(ts) < 2 or float(np.max(energy) - np.min(energy)) <= limit:
        return None
    if bool(np.all(np.diff(energy) <= (limit / DAY_MS) * np.diff(ts))):
        return None
    later = np.searchsorted(ts, ts + DAY_MS)
    ok = later < len(ts)
    if not ok.any():
        return None
    a = np.flatnonzero(ok)
    b = later[ok]
    per_day = (energy[b] - energy[a]) * DAY_MS / (ts[b] - ts[a])
    worst = float(per_day.max())
    if worst <= limit:
        return None
    return Finding(
        "faulty",
        Reason(
            "elec.function_failure.fast",
            round(worst, 3),
            round(limit, 3),
            "energy in a day beyond Imax·Un·24 h",
        ),
        rule_severity=rule.severity,
    )


def clock_findings(
    series: Series | None, events: Sequence[MeterPoint], rule: ClockRule
) -> list[Finding]:
    """Clock offset beyond the limit or clock events → watch."""
    out = []
    offset = series.values.get("clock_offset_s") if series is not None else None
    if offset is not None and len(offset):
        worst = float(np.abs(offset).max())
        if math.isnan(worst):  # some offsets unread: the NaN-aware (slower) reduction
            read = offset[~np.isnan(offset)]
            worst = float(np.abs(read).max()) if len(read) else worst
        if worst > rule.max_offset_s:
            out.append(
                Finding(
                    "watch",
                    Reason(
                        "elec.clock.offset",
                        round(worst, 1),
                        rule.max_offset_s,
                        "meter clock offset beyond the limit",
                    ),
                    rule_severity=rule.severity,
                )
            )
    hits = [e for e in events if str(e.values.get("code")) in rule.events]
    if hits:
        codes = sorted({str(e.values.get("code")) for e in hits})
        out.append(
            Finding(
                "watch",
                Reason(
                    "elec.clock.events",
                    codes,
                    rule.events,
                    "clock events reported",
                    occurrences=event_occurrences(hits),
                ),
                rule_severity=rule.severity,
            )
        )
    return out


def event_occurrences(events: Sequence[MeterPoint]) -> tuple[tuple[str, int], ...]:
    """The distinct events of one meter as occurrences: a duplicate (same time and code)
    is one event (at-least-once delivery)."""
    keys = {(e.ts_ms, str(e.values.get("code"))) for e in events}
    return tuple((f"{code}@{ts}", ts) for ts, code in sorted(keys))


def event_findings(
    events: Sequence[MeterPoint], tamper: EventRule, hardware: EventRule, as_of_ms: int
) -> list[Finding]:
    """Tamper events → inspection (not a replacement); hardware events → faulty.

    An event stays a finding for its rule's `lookback_days`, not just the
    estimation window: a cover opened six weeks ago is still an open case.
    """
    out = []
    for rule, name in ((tamper, "elec.tamper"), (hardware, "elec.hardware")):
        since = as_of_ms - rule.lookback_days * DAY_MS
        hits = [e for e in events if e.values.get("code") in rule.codes and e.ts_ms >= since]
        if not hits:
            continue
        codes = sorted({str(e.values["code"]) for e in hits})
        occurrences = event_occurrences(hits)
        detail = f"{len(occurrences)} event(s), last at {format_ts(max(e.ts_ms for e in hits))}"
        if name == "elec.tamper":
            detail = f"inspection / theft case: {detail}"
            reason = Reason(name, codes, rule.codes, detail, occurrences=occurrences)
            out.append(Finding("normal", reason, inspect=True, rule_severity=rule.severity))
        else:
            detail = f"hardware failure: {detail}"
            reason = Reason(name, codes, rule.codes, detail, occurrences=occurrences)
            out.append(Finding("faulty", reason, rule_severity=rule.severity))
    return out


def master_finding(gates: Gates | None) -> Finding:
    """The master meter is the reference of its district, not estimated against it."""
    detail = "reference meter of the district balance"
    if gates is not None and not gates.passed:
        detail += "; district data gates failed"
    return Finding("normal", Reason("elec.master", None, None, detail))


def no_balance_finding(note: str) -> Finding:
    """A district whose balance cannot be formed: its meters are not estimated."""
    return Finding("unknown", Reason("elec.estimation", None, None, f"no energy balance: {note}"))
