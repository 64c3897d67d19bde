"""Reasons in words: every rule of the catalogue, as the rules produce it, renders as a
sentence with units and no Python repr — on pages, in the CLI and in alert messages."""

from __future__ import annotations

import ast
import io
import math
import re
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.alerts.book import conditions_of, district_conditions
from monitor.core.catalogue import CATALOGUE, block_of
from monitor.core.decision import (
    Decision,
    Finding,
    Reason,
    Stamp,
    decide_meter,
    decision_from_dict,
)
from monitor.core.explain import PHRASES, evidence_value, sentence
from monitor.core.ports import MeterPoint, Series
from monitor.core.rulebook import load_rules
from monitor.electricity import rules as elec
from monitor.electricity.evaluate import fit_district, misfit_reason
from monitor.electricity.intervals import Blocks, Grid, Placed
from monitor.electricity.lots import SampleResult, Sampling
from monitor.evaluation.report import print_report
from monitor.store.state import SqliteState
from monitor.taxi.evaluate import TaxiData, overdue_findings
from monitor.taxi.seals import seal_findings
from monitor.taxi.trips import WorkOrder
from tests import test_lots as lots
from tests import test_rules_elec as e
from tests import test_rules_taxi as t

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "config" / "rules.yaml").rules
STAMP = Stamp("2026-06-01T00:00:00.000Z", "test@1")
# What a rendered reason may never show: a Python repr of a missing value, a list, a dict.
REPR = re.compile(r"None|\[|\]|\{|\}|\bnan\b|\binf\b")


def test_every_catalogue_rule_has_a_phrase_and_a_block() -> None:
    assert set(PHRASES) == set(CATALOGUE)
    blocks = {f"elec.{k}" for k in type(RULES.elec).model_fields}
    blocks |= {f"taxi.{k}" for k in type(RULES.taxi).model_fields}
    assert {entry.block for entry in CATALOGUE.values()} <= blocks


def rule_names_in_the_code() -> set[str]:
    """Every string constant in monitor/ that looks like a rule name."""
    shape = re.compile(r"^(elec|taxi|lot)\.[a-z_]+(\.[a-z_]+)*$")
    files = re.compile(r"\.(html|csv|json|yaml|py)$")  # a template's name is no rule
    found = set()
    for path in (REPO / "monitor").rglob("*.py"):
        if "simulate" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if shape.match(node.value) and not files.search(node.value):
                    found.add(node.value)
            elif isinstance(node, ast.JoinedStr):  # f"lot.{x}" would escape the catalogue
                head = node.values[0] if node.values else None
                text = head.value if isinstance(head, ast.Constant) else None
                if isinstance(text, str) and shape.match(text.rstrip(".")):
                    found.add(f"{text}…")
    return found


def test_every_rule_name_in_the_code_is_in_the_catalogue() -> None:
    blocks = {entry.block for entry in CATALOGUE.values()}
    unknown = sorted(rule_names_in_the_code() - set(CATALOGUE) - blocks)
    assert not unknown, f"add to monitor/core/catalogue.py and monitor/core/explain.py: {unknown}"


ODD_VALUES: list[Any] = [
    None,
    0,
    -1.5,
    23_022.0,
    1e300,
    math.nan,
    math.inf,
    -math.inf,
    True,
    "text",
    [1.5, 2.0],
    [None, None],
    ["clock_error", "clock_battery_low"],
    [],
    {"accept": 1, "reject": 2},
    {"k": None, "nested": [1, {"a": None}]},
]


@pytest.mark.parametrize("rule", sorted(CATALOGUE))
def test_no_value_of_any_shape_renders_as_a_repr(rule: str) -> None:
    for value in ODD_VALUES:
        for threshold in ODD_VALUES:
            text = sentence(rule, value, threshold, "the rule's detail")
            assert not REPR.search(text), (rule, value, threshold, text)
            assert text.startswith("The rule's detail") and text.endswith(".")


# -- every rule as the rules themselves produce it ------------------------------------


def elec_reasons() -> list[Reason]:
    ff = RULES.elec.function_failure
    found: list[Finding] = []
    found += elec.function_findings(e.series([10, 11, 10.5, 11]), ff)  # backwards
    found += elec.function_findings(e.series([23_020, 23_022, 5.0, 5.5]), ff)  # reset
    found += elec.function_findings(e.series([5.0] * 8, current=[3.0] * 8), ff)  # stopped
    fast = e.series([i * 400.0 for i in range(200)])
    found += elec.function_findings(fast, ff)  # fast
    found += elec.clock_findings(
        e.series([1, 2], offset=[10.0, 412.0]),
        [MeterPoint("m", 0, {"code": "clock_battery_low"})],
        RULES.elec.clock,
    )
    events = [MeterPoint("m", 0, {"code": c}) for c in ("cover_open", "relay_fault")]
    found += elec.event_findings(events, RULES.elec.tamper, RULES.elec.hardware, e.STEP)
    for error, half, ratio, current, cls in (
        (4.4, 0.3, 500.0, 2.0, "2"),  # suspect
        (2.5, 0.3, 500.0, 2.0, "2"),  # watch
        (0.2, 0.3, 500.0, 2.0, "2"),  # normal
        (0.2, 0.3, 500.0, 2.0, "7"),  # no limit for its class
        (0.2, 0.3, 500.0, 0.1, "2"),  # light load
        (0.2, 0.3, 2.0, 2.0, "2"),  # observability
        (0.2, 3.0, 500.0, 2.0, "2"),  # interval too wide
        (0.2, math.inf, 500.0, 2.0, "2"),  # interval unbounded
    ):
        found += elec.estimate_findings(
            e.estimate(error, half, ratio), cls, current, e.PASSING, RULES.elec
        )
    base = e.estimate(1.8)
    straddle = replace(base, error_ci_pct=(1.2, 2.6), model_range_pct=(1.7, 2.3))
    found += elec.estimate_findings(straddle, "2", 2.0, e.PASSING, RULES.elec, "night load")
    twin = replace(e.estimate(0.1), confounded_with=("m1",), max_correlation=0.998)
    found += elec.estimate_findings(twin, "2", 2.0, e.PASSING, RULES.elec)
    failing = elec.Gates(
        False, 0.5, 0.5, 10, 3.0, [Reason("elec.estimation.min_intervals", 10, 300, "few")]
    )
    found += elec.estimate_findings(e.estimate(0.2), "2", 2.0, failing, RULES.elec)
    found += elec.estimate_findings(None, "2", 2.0, e.PASSING, RULES.elec)
    found += [elec.master_finding(failing), elec.no_balance_finding("no registered master meter")]
    reasons = [f.stated() for f in found]
    # the district gates: two days with 25 % line loss, a gap, and a district too short to solve
    lossy = e.district_of(0.25)
    holed = dict(lossy)
    keep = np.ones(len(lossy["A"].ts_ms), dtype=bool)
    keep[10:40] = False
    holed["A"] = Series(
        lossy["A"].ts_ms[keep], {"energy_kwh": lossy["A"].values["energy_kwh"][keep]}
    )
    end = int(lossy["M"].ts_ms[-1])
    short = {
        m: Series(s.ts_ms[:3], {k: v[:3] for k, v in s.values.items()}) for m, s in lossy.items()
    }
    for district in (holed, short):
        result = fit_district("D1", district, "M", RULES.elec, 0, end)
        assert result.gates is not None
        reasons += result.gates.failures
    # a district whose residuals follow the time of day (what an AC feeder with street
    # lighting gives, tests/test_testbed.py), its gates passed
    fitted = fit_district("D1", lossy, "M", RULES.elec, 0, end)
    assert fitted.fit is not None and fitted.gates is not None
    lit = replace(
        fitted,
        fit=replace(fitted.fit, misfit="residuals follow the time of day"),
        gates=replace(fitted.gates, passed=True, failures=[]),
    )
    misfit = misfit_reason(lit, RULES.elec.estimation)
    assert misfit is not None
    # ...and one whose residuals follow each other (street lighting switched by dusk)
    n = 400
    placed = Placed(["M", "a"], np.zeros((n, 2)), 2 * n, 2 * n)
    blk = Blocks(
        ["a"], np.ones((n - 1, 1)), np.ones(n - 1), np.ones(n - 1, np.int64), np.arange(1, n)
    )
    structured = replace(fitted.fit, residual_autocorrelation=0.45, misfit="a night load")
    grid = Grid(0, e.STEP, n, 0)
    reasons += elec.district_gates(placed, grid, blk, structured, RULES.elec.estimation).failures
    return [*reasons, misfit]


def lot_reasons() -> list[Reason]:
    m = lots.member
    early = date(2025, 6, 1)  # before the lots' horizon
    cases = [
        lots.lot([m(i) for i in range(30)], as_of=early),  # horizon
        lots.lot([m(i, "faulty" if i < 2 else "normal") for i in range(60)], early),  # watched
        lots.lot([m(i) for i in range(60)]),  # clean
        lots.lot([m(i, "faulty" if i < 4 else "normal") for i in range(60)]),  # reject
        lots.lot(
            [m(i, "faulty" if i < 1 else "suspect" if i < 3 else "normal", 2.5) for i in range(60)]
        ),  # borderline: faulty, suspect, error quantile
    ]
    no_class = [(r.model_copy(update={"accuracy_class": None}), d) for r, d in map(m, range(60))]
    cases.append(lots.lot(no_class))  # no MPE: no error distribution to judge
    undated = [(r.model_copy(update={"verified_on": None}), d) for r, d in map(m, range(5))]
    cases.append(lots.lot(undated))  # lot.due_on
    insufficient = [m(i, "unknown", None, False) for i in range(60)]
    sampled = lots.lot(insufficient)  # evaluable share
    cases.append(sampled)
    drawn, plan = sampled.extra["drawn"], sampled.extra["plan"]
    assert sampled.due_on is not None
    for results in (
        [SampleResult(x, 0.3, True) for x in drawn],  # accept
        [SampleResult(x, 5.0, False) for x in drawn],  # reject
        [SampleResult(drawn[0], 0.3, True)],  # incomplete
    ):
        due = sampled.due_on.isoformat()
        cases.append(lots.lot(insufficient, sampling=Sampling(due, plan, drawn, results)))
    return [r for d in cases for r in d.reasons]


def taxi_reasons(tmp_path: Path) -> list[Reason]:
    logs = t.trips_from_logs
    found: list[Finding] = []
    found += t.judge(logs(t.noisy(0.0, 100, seed=4)), fleet_median=None)[0]  # no fleet
    found += t.judge(logs(t.noisy(0.0, 10, seed=4)))[0]  # min trips
    found += t.judge(logs(t.noisy(0.0, 100, 0.5, seed=4)))[0]  # bias
    found += t.judge(logs(t.noisy(0.7, 100, 2.0, seed=1)))[0]  # unproven
    found += t.judge(logs(t.noisy(0.8, 100, 0.5, seed=1)))[0]  # guard band
    found += t.judge(logs(t.noisy(3.0, 100, 1.0, seed=1)))[0]  # limit
    step = np.concatenate([t.noisy(0.0, 200, seed=2), t.noisy(5.0, 100, seed=3)])
    found += t.judge(logs(step))[0]  # cusum
    clean = logs(t.noisy(0.0, 100, seed=4))
    as_of = clean[-1].end_ms
    gross = [
        t.trip(500 + i, 15.0, 10.0, end_ms=as_of - d * t.DAY) for i, d in enumerate((1, 5, 20))
    ]
    found += t.judge(clean + gross, as_of=as_of)[0]  # gross trips
    fares = logs(t.noisy(0.0, 100, seed=9))
    fares[10] = replace(fares[10], fare_cny=fares[10].fare_cny + 5)
    fares[20] = replace(fares[20], tariff_version="SH-2019")
    found += t.judge(fares)[0]  # fare mismatch, tariff version
    over = [replace(x, fare_cny=x.fare_cny * 1.3 + 2) for x in logs(t.noisy(0.0, 50, seed=9))]
    found += t.judge(over)[0]  # systematic
    status = [t.beat(t.T0 + i * 5 * t.MIN, "broken" if 3 <= i < 9 else "intact") for i in range(12)]
    status += [t.beat(t.T0 + 70 * t.MIN, ppk=1100.0)]
    events = [t.event("seal_broken", t.T0), t.event("param_changed", t.T0 + 3 * t.HOUR)]
    orders = [WorkOrder("T1", t.T0 + 3 * t.HOUR - 1, t.T0 + 3 * t.HOUR + 1, "recalibration")]
    found += seal_findings("T1", status, events, orders, RULES.taxi.seal)
    state = SqliteState(tmp_path / "state.sqlite")
    try:
        state.save_tariff("SH-2026", {}, t.T0, t.T0 + t.DAY, ["T1"])
        late = overdue_findings(state, TaxiData({}, {}, {}, {}), t.T0 + 2 * t.DAY)
    finally:
        state.close()
    found += late["T1"]
    return [f.stated() for f in found]


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> list[Reason]:
    return elec_reasons() + lot_reasons() + taxi_reasons(tmp_path_factory.mktemp("taxi"))


def test_the_rules_produce_every_rule_of_the_catalogue(produced: list[Reason]) -> None:
    assert {r.rule for r in produced} == set(CATALOGUE)


def test_every_reason_the_rules_produce_reads_as_a_sentence_with_units(
    produced: list[Reason],
) -> None:
    for r in produced:
        text = sentence(r.rule, r.value, r.threshold, r.detail)
        assert not REPR.search(text), (r, text)
        assert not text[0].islower() and text.endswith("."), text
    said = {r.rule: sentence(r.rule, r.value, r.threshold, r.detail) for r in produced}
    # the examples, now with their units
    assert "kWh" in said["elec.function_failure.stopped"]
    assert said["elec.function_failure.reset"].endswith("register from 23 022 kWh to 5 kWh.")
    assert "usable intervals, at least 300" in said["elec.estimation.min_intervals"]
    assert (
        "clock_battery_low (the rule's codes: clock_error, clock_battery_low)"
        in said["elec.clock.events"]
    )
    assert "alarm level 5 σ" in said["taxi.distance.cusum"]
    assert " % of fares" in said["taxi.fare.mismatch"]


def test_alert_messages_and_the_cli_show_every_reason_in_words(produced: list[Reason]) -> None:
    findings = [Finding("suspect", r, rule_severity="major") for r in produced]
    d = decide_meter("E1", "elec", findings, None, None, {"district": "D1"}, STAMP)
    conditions = conditions_of([d], 0) + district_conditions({"D1": d.reasons}, 0)
    assert conditions
    for c in conditions:
        assert not REPR.search(c.message), c.message
    out = io.StringIO()
    summary = {
        "as_of": STAMP.as_of,
        "rules_version": STAMP.rules_version,
        "meters": 1,
        "meter_decisions": {"resample": 1},
        "meter_states": {"suspect": 1},
        "districts": 1,
        "districts_passing_gates": 0,
        "lots": 0,
        "lot_decisions": {},
    }
    print_report(summary, [d], [], out)
    text = out.getvalue()
    for r in produced:  # every reason, not only the first
        assert sentence(r.rule, r.value, r.threshold, r.detail) in text
    assert "decisions resample 1; states suspect 1" in text
    assert not REPR.search(text), text


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("fare_mismatch_share", 0.0526, "5.3 %"),
        ("completeness", 0.9812, "98.1 %"),
        ("error_pct", 4.3616, "+4.362 %"),
        ("error_ci_pct", [4.1768, 4.5464], "+4.177 % to +4.546 %"),
        ("mean_current_a", 3.236, "3.236 A"),
        ("fare_mean_diff_cny", 3.29, "3.29 CNY"),
        ("line_loss_pct", 2.2216, "2.222 %"),
        ("evaluable", True, "yes"),
        ("lot", None, "–"),
        (
            "cusum",
            {"alarm": True, "direction": "up", "peak": 7.123, "reference_pct": -0.5},
            "alarm yes; direction up; peak 7.123; reference pct −0.5 %",
        ),
    ],
)
def test_evidence_shows_units_and_shares_in_percent(key: str, value: Any, text: str) -> None:
    assert evidence_value(key, value) == text


def test_a_decision_stored_before_severities_reads_back_as_info() -> None:
    body = Decision("E1", "elec", "keep", "watch", None, "x", "r").as_dict()
    body["reasons"] = [{"rule": "elec.clock.offset", "value": 400, "threshold": 300, "detail": "d"}]
    assert decision_from_dict(body).reasons[0].severity == "info"
    assert block_of("elec.clock.offset") == "elec.clock" and block_of("x.y") == "x.y"
