"""Policy impact per rules version: the figures by hand on a small pass, then the API, the
comparison of two versions and the CSV over a simulated fleet (the page: test_web.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from monitor.core.decision import Action, Decision, Reason
from monitor.core.regions import RegionIndex
from monitor.core.registry import MeterRow
from monitor.core.rulebook import load_rules
from monitor.evaluation.impact import ImpactQuery, delta, impact, rows_of
from monitor.evaluation.runner import EvaluationResult
from monitor.platform.config import ImpactSettings, ModelCost
from tests.test_shadow import STRICT, Desk, env, evaluate  # noqa: F401  (env: the fixture)

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "config" / "rules.yaml").rules
STAMP = ("2026-06-01T00:00:00.000Z", "test@1")
DUE = date(2026, 9, 1)


def row(i: int, lot: str = "L1", model: str = "DDS", region: str | None = None) -> MeterRow:
    return MeterRow(
        meter_id=f"E{i}", kind="elec", district="D1", lot=lot, model=model, accuracy_class="2",
        verified_on=date(2018, 9, 1), period_years=8, region=region,
    )  # fmt: skip


def meter(i: int, decision: Action, error: float | None = None, ci: float = 0.2) -> Decision:
    ev = {"error_pct": error, "error_ci_pct": None if error is None else [error - ci, error + ci]}
    new_due = date(2030, 9, 1) if decision == "extend" else None
    return Decision(
        f"E{i}", "elec", decision, "normal", DUE, *STAMP, evidence=ev, new_due_on=new_due
    )


def lot(name: str, decision: str, **extra: object) -> Decision:
    reasons = [Reason("lot.x", 1, 1, "")]
    return Decision(name, "lot", decision, "normal", DUE, *STAMP, reasons, extra=dict(extra))  # type: ignore[arg-type]


def small_pass() -> tuple[EvaluationResult, dict[str, MeterRow]]:
    rows = {
        r.meter_id: r
        for r in [
            row(1), row(2), row(3, model="DDZY"), row(4), row(5),
            row(6, lot="L2"), row(7, lot="L3"), row(8, lot="L1", region="east"),
        ]
    }  # fmt: skip
    meters = {
        "E1": meter(1, "extend", 0.1),
        "E2": meter(2, "extend", 3.5),  # on the limit: half likely beyond
        "E3": meter(3, "extend"),  # no estimate: L1's mean
        "E4": meter(4, "replace", 6.0),  # out of service
        "E5": meter(5, "keep", -0.2),
        "E6": meter(6, "keep"),  # L2 accepted by sample at LQ 5 %
        "E7": meter(7, "resample"),  # L3: no evidence at all
        "E8": meter(8, "extend", 0.0),  # another region
    }
    plan = {"kind": "iso2859-2", "lq": 5.0, "aql": None}
    lots = {
        "L1": lot("L1", "extend"),
        "L2": lot("L2", "extend", plan=plan, verdict="accept"),
        "L3": lot("L3", "resample"),
    }
    return EvaluationResult(STAMP[0], STAMP[1], meters, lots, {}), rows


COSTS = ImpactSettings(models={"DDS": ModelCost(unit_cost_cny=300.0, mass_kg=1.2)})


def test_the_figures_by_hand() -> None:
    result, rows = small_pass()
    index = RegionIndex.from_rows(rows.values())
    # Region "default" only: E8 (east) is left out; L1's E8 also doesn't count in it.
    q = ImpactQuery(date(2026, 1, 1), date(2026, 12, 31), "default")
    r = impact(result, rows, RULES, COSTS, index, q)
    assert r["meters"] == {"elec": 7}
    assert r["meter_decisions"] == {"extend": 3, "keep": 2, "replace": 1, "resample": 1}
    assert r["lot_decisions"] == {"extend": 2, "resample": 1}
    assert r["meter_years_gained"] == pytest.approx(3 * 1461 / 365.25, abs=0.01)
    assert r["replacements_avoided"] == 3
    # E1 and E2 are DDS (300 CNY, 1.2 kg); E3 is DDZY: no cost, the default mass.
    assert (r["replacement_cost_avoided_cny"], r["replacements_without_cost"]) == (600.0, 1)
    assert r["e_waste_avoided_kg"] == pytest.approx(2 * 1.2 + 0.176)
    risk = r["residual_risk"]
    z = 1.959964
    from statistics import NormalDist

    def beyond(e: float) -> float:
        d = NormalDist(e, 0.2 / z)
        return d.cdf(-3.5) + 1 - d.cdf(3.5)

    # L1's estimated meters, whatever their region and decision: E1, E2, E4 (replaced, but
    # evidence of the lot all the same), E5, E8.
    l1 = (beyond(0.1) + beyond(3.5) + beyond(6.0) + beyond(-0.2) + beyond(0.0)) / 5
    assert risk["meters_left_in_service"] == 6
    assert risk["from_estimates"] == pytest.approx(
        beyond(0.1) + beyond(3.5) + beyond(-0.2), abs=1e-3
    )
    assert risk["from_lots"] == pytest.approx(l1 + 0.05, abs=1e-3)  # E3 from L1, E6 from L2's LQ
    assert risk["unassessed_meters"] == 1  # E7
    assert risk["expected_beyond_limit"] == pytest.approx(
        risk["from_estimates"] + risk["from_lots"], abs=1e-3
    )


def test_the_range_and_region_select_the_subjects() -> None:
    result, rows = small_pass()
    index = RegionIndex.from_rows(rows.values())
    before = impact(
        result, rows, RULES, COSTS, index, ImpactQuery(date(2025, 1, 1), date(2025, 12, 31))
    )
    assert before["meters"] == {} and before["lots"] == 0
    east = impact(
        result, rows, RULES, COSTS, index, ImpactQuery(date(2026, 1, 1), date(2026, 12, 31), "east")
    )
    assert east["meter_decisions"] == {"extend": 1} and east["lots"] == 0
    everything = impact(
        result, rows, RULES, COSTS, index, ImpactQuery(date(2026, 1, 1), date(2026, 12, 31))
    )
    assert sum(everything["meter_decisions"].values()) == 8
    figures = dict(rows_of(everything))
    assert figures["meters: extend"] == 4 and figures["lots: extend"] == 2


def test_delta_is_the_second_minus_the_first() -> None:
    result, rows = small_pass()
    index = RegionIndex.from_rows(rows.values())
    q = ImpactQuery(date(2026, 1, 1), date(2026, 12, 31))
    a = impact(result, rows, RULES, COSTS, index, q)
    fewer = EvaluationResult(
        STAMP[0], "test@2", {**result.meters, "E1": meter(1, "resample", 0.1)}, result.lots, {}
    )
    b = impact(fewer, rows, RULES, COSTS, index, q)
    d = delta(a, b)
    assert d["meter_decisions"]["extend"] == -1 and d["meter_decisions"]["resample"] == 1
    assert d["replacements_avoided"] == -1 and d["replacement_cost_avoided_cny"] == -300.0
    assert d["meter_years_gained"] == pytest.approx(-1461 / 365.25, abs=0.01)


# --- the API over a simulated fleet -------------------------------------------------------


def test_the_report_for_the_rules_in_force_and_a_candidate(env: Desk) -> None:  # noqa: F811
    evaluate(env)
    body = env.client.get("/api/impact", params={"start": "2020-01-01", "end": "2040-12-31"}).json()
    report = body["report"]
    assert body["compare"] is None and report["rules_version"] == env.desk.in_force().version
    stored = [env.state.decision("meter", m.meter_id) for m in env.state.registry_rows()]
    decided = [d for d in stored if d is not None and d.get("due_on")]
    assert sum(report["meter_decisions"].values()) == len(decided)
    extended = sum(1 for d in decided if d["decision"] == "extend")
    assert report["replacements_avoided"] == extended and extended > 0
    assert report["e_waste_avoided_kg"] == pytest.approx(extended * 0.176)
    assert report["replacement_cost_avoided_cny"] is None  # no unit cost configured
    env.client.put(
        "/api/rules/candidate", content=STRICT, headers={"content-type": "application/yaml"}
    )
    both = env.client.get(
        "/api/impact", params={"start": "2020-01-01", "end": "2040-12-31", "compare": "candidate"}
    ).json()
    assert both["report"] == report
    assert both["compare"]["rules_version"] == env.desk.candidate().version  # type: ignore[union-attr]
    # A stricter limit extends fewer meters.
    assert both["delta"]["replacements_avoided"] < 0
    assert both["delta"]["replacements_avoided"] == (
        both["compare"]["replacements_avoided"] - report["replacements_avoided"]
    )


def test_bad_requests_say_what_is_wrong(env: Desk) -> None:  # noqa: F811
    evaluate(env)
    unknown = env.client.get("/api/impact", params={"rules": "nope@1"})
    assert unknown.status_code == 404 and "known: in-force, candidate" in unknown.json()["detail"]
    backwards = env.client.get("/api/impact", params={"start": "2027-01-01", "end": "2026-01-01"})
    assert backwards.status_code == 422 and "before start" in backwards.json()["detail"]
    garbled = env.client.get("/api/impact", params={"start": "next week"})
    assert garbled.status_code == 422 and "not a date" in garbled.json()["detail"]
    region = env.client.get("/api/impact", params={"region": "north"})
    assert region.status_code == 422


def test_a_promoted_version_stays_reportable(env: Desk) -> None:  # noqa: F811
    evaluate(env)
    before = env.desk.in_force().version
    env.client.put(
        "/api/rules/candidate", content=STRICT, headers={"content-type": "application/yaml"}
    )
    assert env.client.post("/api/rules/promote", json={"actor": "ops"}).status_code == 200
    versions = env.client.get("/api/impact/versions").json()["items"]
    assert {v["version"] for v in versions} >= {before, env.desk.in_force().version}
    old = env.client.get("/api/impact", params={"rules": before, "compare": "in-force"}).json()
    assert old["report"]["rules_version"] == before
    assert old["compare"]["rules_version"] == env.desk.in_force().version
