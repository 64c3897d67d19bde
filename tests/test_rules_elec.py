"""Electricity meter rules: each one, on data made to trip it or not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.alerts.book import district_conditions
from monitor.core.clock import DAY_MS
from monitor.core.decision import Finding, Reason
from monitor.core.ports import MeterPoint, Series
from monitor.core.rulebook import FunctionFailureRule, load_rules
from monitor.electricity import rules as elec
from monitor.electricity.balance import MeterEstimate
from monitor.electricity.evaluate import fit_district

RULES = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml").rules.elec
STEP = 900_000
PASSING = elec.Gates(True, 1.0, 1.0, 2000, 3.0, [])


def series(
    energy: list[float], current: list[float] | None = None, offset: list[float] | None = None
) -> Series:
    n = len(energy)
    values = {"energy_kwh": np.array(energy, dtype=float)}
    if current is not None:
        values["current_a"] = np.array(current, dtype=float)
    if offset is not None:
        values["clock_offset_s"] = np.array(offset, dtype=float)
    return Series(np.arange(n, dtype=np.int64) * STEP, values)


def estimate(error: float, half: float = 0.3, ratio: float = 500.0) -> MeterEstimate:
    return MeterEstimate(
        "m",
        1 / (1 + error / 100),
        error,
        (error - half, error + half),
        half / 1.96,
        ratio,
        2000,
        0.2,
    )


def states(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.state, f.reason.rule) for f in findings]


def judge(error: float, half: float = 0.3) -> list[tuple[str, str]]:
    return states(elec.estimate_findings(estimate(error, half), "2", 2.0, PASSING, RULES))


def test_error_limit_suspect_watch_normal() -> None:
    assert judge(4.5) == [("suspect", "elec.error_limit")]
    assert judge(-4.5) == [("suspect", "elec.error_limit")]
    # beyond the limit, but the interval reaches back inside it: not proven → watch
    assert judge(3.7, half=0.5) == [("watch", "elec.error_limit.watch")]
    assert judge(2.5) == [("watch", "elec.error_limit.watch")]  # above 0.6 × 3.5
    assert judge(1.0) == [("normal", "elec.error_limit")]
    # class 1 has a tighter limit
    assert states(elec.estimate_findings(estimate(2.2), "1", 2.0, PASSING, RULES)) == [
        ("suspect", "elec.error_limit")
    ]


def test_unknown_when_the_estimate_cannot_carry_a_judgement() -> None:
    light = elec.estimate_findings(estimate(5.0), "2", 0.2, PASSING, RULES)
    assert states(light) == [("unknown", "elec.estimation.light_load")]
    blind = elec.estimate_findings(estimate(5.0, ratio=2), "2", 2.0, PASSING, RULES)
    assert states(blind) == [("unknown", "elec.estimation.observability")]
    wide = elec.estimate_findings(estimate(5.0, half=2.0), "2", 2.0, PASSING, RULES)
    assert states(wide) == [("unknown", "elec.estimation.ci_width")]
    failed = elec.Gates(False, 0.9, 0.9, 2000, 3.0, [Reason("x", 1, 2, "bad data")])
    assert states(elec.estimate_findings(estimate(5.0), "2", 2.0, failed, RULES)) == [
        ("unknown", "elec.estimation.gates")
    ]
    assert states(elec.estimate_findings(None, "2", 2.0, PASSING, RULES))[0][0] == "unknown"


def test_the_masters_class_does_not_make_a_meter_unobservable() -> None:
    """The master's Type B is one uncertainty for the whole district: it widens the
    absolute interval the limit is judged on, not the meter's own resolution."""
    resolved = replace(estimate(2.5, half=1.6), relative_ci_pct=(1.2, 3.8))
    assert states(elec.estimate_findings(resolved, "2", 2.0, PASSING, RULES)) == [
        ("watch", "elec.error_limit.watch")
    ]
    blurred = replace(resolved, relative_ci_pct=(0.8, 4.2))
    assert states(elec.estimate_findings(blurred, "2", 2.0, PASSING, RULES)) == [
        ("unknown", "elec.estimation.ci_width")
    ]


def test_residuals_that_follow_each_other_fail_the_districts_gates() -> None:
    """A slowly changing component no loss model describes is not noise: the district's
    estimates are not judged, and the gate says why."""
    from monitor.electricity.balance import DistrictFit
    from monitor.electricity.intervals import Blocks, Grid, Placed

    n = 400
    placed = Placed(["M", "a"], np.zeros((n, 2)), 2 * n, 2 * n)
    blk = Blocks(
        ["a"], np.ones((n - 1, 1)), np.ones(n - 1), np.ones(n - 1, np.int64), np.arange(1, n)
    )
    grid = Grid(0, STEP, n, 0)
    for rho, passed in ((-0.35, True), (0.45, False)):
        fit = DistrictFit(
            {},
            0.1,
            1e-4,
            3.0,
            0.05,
            0.99,
            n - 1,
            n - 1,
            500.0,
            misfit="the fixed loss changes with the time of day",
            residual_autocorrelation=rho,
        )
        gates = elec.district_gates(placed, grid, blk, fit, RULES.estimation)
        assert gates.passed is passed
        if not passed:
            (failure,) = gates.failures
            assert failure.rule == "elec.estimation.residual_structure"
            assert failure.value == 0.45 and failure.threshold == 0.1
            assert "time of day" in failure.detail


def test_running_backwards_versus_reset() -> None:
    ff = RULES.function_failure
    assert states(elec.function_findings(series([10, 11, 10.5, 11]), ff)) == [
        ("faulty", "elec.function_failure.backwards")
    ]
    assert states(elec.function_findings(series([1000, 1001, 0.02, 1.0]), ff)) == [
        ("watch", "elec.function_failure.reset")
    ]
    assert elec.function_findings(series([10, 11, 12, 13]), ff) == []


def test_stopped_needs_current_and_enough_implied_energy() -> None:
    ff = RULES.function_failure
    frozen = [5.0] * 12
    assert states(elec.function_findings(series(frozen, current=[2.0] * 12), ff)) == [
        ("faulty", "elec.function_failure.stopped")
    ]  # 2 A × 220 V × 2.75 h ≈ 1.2 kWh
    assert elec.function_findings(series(frozen, current=[0.05] * 12), ff) == []  # no load
    assert elec.function_findings(series(frozen[:2], current=[0.5] * 2), ff) == []  # 0.03 kWh
    assert elec.function_findings(series(frozen), ff) == []  # no current reported: no claim


def test_running_fast_but_not_for_a_master() -> None:
    ff = RULES.function_failure
    energy = [i * 5.0 for i in range(200)]  # 480 kWh a day > 60 A × 220 V × 24 h
    assert states(elec.function_findings(series(energy), ff)) == [
        ("faulty", "elec.function_failure.fast")
    ]
    assert elec.function_findings(series(energy), ff, master=True) == []


def test_clock_offset_and_events() -> None:
    rule = RULES.clock
    out = elec.clock_findings(
        series([1, 2, 3], offset=[10, -400, 20]),
        [MeterPoint("m", 5, {"code": "clock_battery_low"})],
        rule,
    )
    assert states(out) == [("watch", "elec.clock.offset"), ("watch", "elec.clock.events")]
    assert out[0].reason.value == 400.0


def test_tamper_is_an_inspection_and_hardware_is_faulty() -> None:
    events = [
        MeterPoint("m", 5, {"code": "cover_open"}),
        MeterPoint("m", 9, {"code": "relay_fault"}),
        MeterPoint("m", 7, {"code": "power_down"}),
    ]
    out = elec.event_findings(events, RULES.tamper, RULES.hardware, as_of_ms=10)
    assert [(f.state, f.inspect, f.reason.rule) for f in out] == [
        ("normal", True, "elec.tamper"),
        ("faulty", False, "elec.hardware"),
    ]


def test_a_tamper_case_outlives_the_estimation_window() -> None:
    day = 86_400_000
    opened = [MeterPoint("m", 100 * day, {"code": "cover_open"})]
    later = elec.event_findings(opened, RULES.tamper, RULES.hardware, as_of_ms=160 * day)
    assert [f.reason.rule for f in later] == ["elec.tamper"]  # 60 days on: still open
    gone = elec.event_findings(opened, RULES.tamper, RULES.hardware, as_of_ms=500 * day)
    assert gone == []  # beyond the rule's lookback


def test_a_plausible_loss_model_across_a_decision_line_is_unknown() -> None:
    """Never normal on an estimate another plausible loss model puts in the watch band or
    beyond the limit; the reason gives the range and the district's misfit."""
    base = estimate(1.8)
    straddle = MeterEstimate(
        "m", base.beta, 1.8, (1.2, 2.6), 0.2, 500.0, 2000, 0.2, model_range_pct=(1.7, 2.3)
    )
    found = elec.estimate_findings(straddle, "2", 2.0, PASSING, RULES, "night load")
    assert states(found) == [("unknown", "elec.estimation.loss_model")]
    assert found[0].reason.value == [1.7, 2.3] and "night load" in found[0].reason.detail
    steady = MeterEstimate(
        "m", base.beta, 1.8, (1.2, 2.0), 0.2, 500.0, 2000, 0.2, model_range_pct=(1.6, 1.9)
    )
    assert states(elec.estimate_findings(steady, "2", 2.0, PASSING, RULES)) == [
        ("normal", "elec.error_limit")
    ]


def test_a_collinear_meter_is_unknown_and_names_its_twin() -> None:
    twin = MeterEstimate(
        "m3",
        1.0,
        0.1,
        (0.0, 0.2),
        0.05,
        800.0,
        2000,
        0.2,
        confounded_with=("m1",),
        max_correlation=0.998,
    )
    found = elec.estimate_findings(twin, "2", 2.0, PASSING, RULES)
    assert states(found) == [("unknown", "elec.estimation.collinear")]
    assert "confounded with m1" in found[0].reason.detail


def test_an_exporting_prosumer_is_not_a_stopped_meter() -> None:
    ff = RULES.function_failure
    n = 20
    exporting = Series(
        np.arange(n, dtype=np.int64) * STEP,
        {
            "energy_kwh": np.full(n, 100.0),  # forward register still: all day export
            "reverse_kwh": np.arange(n, dtype=np.float64) * 0.5,
            "current_a": np.full(n, 8.0),
        },
    )
    assert elec.function_findings(exporting, ff) == []
    stuck = Series(exporting.ts_ms, {**exporting.values, "reverse_kwh": np.full(n, 3.0)})
    assert states(elec.function_findings(stuck, ff)) == [
        ("faulty", "elec.function_failure.stopped")
    ]


def _fast_by_every_window(s: Series, rule: FunctionFailureRule) -> float | None:
    """The running-fast figure by brute force: every reading's following day."""
    ts, energy = s.ts_ms, s.values["energy_kwh"]
    worst = None
    for a in range(len(ts)):
        b = int(np.searchsorted(ts, ts[a] + DAY_MS))
        if b < len(ts):
            rate = (energy[b] - energy[a]) * DAY_MS / (ts[b] - ts[a])
            worst = rate if worst is None else max(worst, rate)
    limit = rule.imax_a * rule.un_v * 24 / 1000
    return worst if worst is not None and worst > limit else None


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(0.0, 4.5), min_size=2, max_size=400),
    gaps=st.lists(st.integers(1, 3), min_size=400, max_size=400),
)
def test_the_running_fast_shortcut_finds_what_every_window_finds(
    steps: list[float], gaps: list[int]
) -> None:
    """Meters whose fastest step is within the limit are cleared without looking at
    windows; the others are judged on every window, as before the shortcut."""
    ts = np.concatenate([[0], np.cumsum(np.array(gaps[: len(steps) - 1]) * STEP)]).astype(np.int64)
    energy = np.concatenate([[100.0], 100.0 + np.cumsum(steps[1:])])
    s = Series(ts, {"energy_kwh": energy})
    rule = RULES.function_failure
    expected = _fast_by_every_window(s, rule)
    found = [f for f in elec.function_findings(s, rule) if f.reason.rule.endswith(".fast")]
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].reason.value == round(expected, 3)


def district_of(loss_share: float, days: float = 2.0) -> dict[str, Series]:
    """Two customers and a master that also feeds `loss_share` of what it supplies to losses."""
    n = int(days * 96) + 1
    rng = np.random.default_rng(3)
    a = np.concatenate([[0.0], np.cumsum(rng.uniform(0.1, 0.4, n - 1))])
    b = np.concatenate([[0.0], np.cumsum(rng.uniform(0.05, 0.6, n - 1))])
    ts = np.arange(n, dtype=np.int64) * STEP
    master = (a + b) / (1 - loss_share)
    return {
        "M": Series(ts, {"energy_kwh": master}),
        "A": Series(ts, {"energy_kwh": a + 100}),
        "B": Series(ts, {"energy_kwh": b + 50}),
    }


def test_only_a_line_loss_out_of_band_is_a_district_alert() -> None:
    series_of = district_of(0.25)
    end = int(series_of["M"].ts_ms[-1])
    result = fit_district("D1", series_of, "M", RULES, 0, end)
    assert result.gates is not None and not result.gates.passed
    by_rule = {r.rule: r.severity for r in result.gates.failures}
    # two days: too few intervals (too little data, no alert), and 25 % line loss
    assert by_rule == {
        "elec.estimation.min_intervals": "info",
        "elec.estimation.line_loss": "major",
    }
    [c] = district_conditions({"D1": result.gates.failures}, end)
    assert (c.kind, c.subject, c.rule, c.severity) == (
        "district",
        "D1",
        "elec.estimation.line_loss",
        "major",
    )
    plain = fit_district("D1", district_of(0.03), "M", RULES, 0, end)
    assert plain.gates is not None and not plain.gates.passed
    assert district_conditions({"D1": plain.gates.failures}, end) == []
