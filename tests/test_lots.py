"""Lot decisions: horizon, extend, resample with a recorded draw, replace, sample results."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from monitor.alerts.book import conditions_of
from monitor.core.decision import Decision, Stamp, State
from monitor.core.registry import MeterRow
from monitor.core.rulebook import ElecRules, load_rules, parse_rules
from monitor.electricity.lots import (
    SampleResult,
    Sampling,
    add_months,
    decide_lot,
    estimated_nonconforming_share,
)

RULES = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml").rules.elec
STAMP = Stamp("2026-06-01T00:00:00.000Z", "test@1")


def member(
    i: int, state: State = "normal", error: float | None = 0.1, evaluable: bool = True
) -> tuple[MeterRow, Decision]:
    row = MeterRow(
        meter_id=f"E{i:03d}",
        kind="elec",
        district="D1",
        lot="L1",
        accuracy_class="2",
        verified_on=date(2018, 9, 1),
        period_years=8,
    )
    decision = Decision(
        row.meter_id,
        "elec",
        "keep",
        state,
        row.due_on,
        STAMP.as_of,
        STAMP.rules_version,
        evidence={"error_pct": error, "evaluable": evaluable},
    )
    return row, decision


def lot(
    members: list[tuple[MeterRow, Decision]],
    as_of: date = date(2026, 6, 1),
    sampling: Sampling | None = None,
) -> Decision:
    return decide_lot("L1", members, as_of, RULES.lot, RULES.error_limit, sampling, STAMP)


def test_outside_the_horizon_nothing_is_decided() -> None:
    d = lot([member(i) for i in range(30)], as_of=date(2025, 6, 1))  # due 2026-09-01
    assert d.decision == "keep" and d.reasons[0].rule == "lot.horizon"
    assert d.reasons[0].threshold == "2025-09-01"


def test_clean_lot_is_extended_by_four_years() -> None:
    d = lot([member(i, error=0.1 * (i % 5)) for i in range(60)])
    assert d.decision == "extend" and d.state == "normal"
    assert d.due_on == date(2026, 9, 1) and d.new_due_on == date(2030, 9, 1)
    assert d.evidence["evaluable_share"] == 1.0


def test_insufficient_evidence_draws_a_recorded_reproducible_sample() -> None:
    members = [
        member(
            i,
            state="normal" if i < 20 else "unknown",
            error=0.1 if i < 20 else None,
            evaluable=i < 20,
        )
        for i in range(60)
    ]
    first, again = lot(members), lot(list(reversed(members)))
    assert first.decision == "resample" and first.state == "unknown"
    assert [r.rule for r in first.reasons] == ["lot.evaluable_share"]
    plan = first.extra["plan"]
    assert (plan["code_letter"], plan["sample_size"], plan["accept"], plan["reject"]) == (
        "E",
        13,
        0,
        1,
    )
    assert len(first.extra["drawn"]) == 13 and first.extra["drawn"] == again.extra["drawn"]
    assert first.extra["seed"] == "L1|2026-09-01"


def test_too_many_faulty_meters_replace_the_lot() -> None:
    members = [member(i, state="faulty" if i < 4 else "normal") for i in range(60)]
    d = lot(members)
    assert d.decision == "replace" and d.reasons[0].rule == "lot.reject_faulty_share"


def test_sample_results_accept_or_reject_against_ac_re() -> None:
    members = [
        member(i, state="suspect" if i < 3 else "normal", error=4.0 if i < 3 else 0.1)
        for i in range(60)
    ]
    drawn = lot(members)
    assert drawn.decision == "resample" and drawn.state == "suspect"
    ids = drawn.extra["drawn"]
    done = [SampleResult(m, 0.3, True) for m in ids]
    accepted = lot(members, sampling=Sampling("2026-09-01", drawn.extra["plan"], ids, done))
    assert accepted.decision == "extend" and accepted.new_due_on == date(2030, 9, 1)
    assert accepted.reasons[0].threshold == {"accept": 0, "reject": 1}
    one_bad = [SampleResult(ids[0], 2.6, False)]
    rejected = lot(members, sampling=Sampling("2026-09-01", drawn.extra["plan"], ids, one_bad))
    assert rejected.decision == "replace" and rejected.extra["verdict"] == "reject"
    partial = lot(members, sampling=Sampling("2026-09-01", drawn.extra["plan"], ids, done[:5]))
    assert partial.decision == "resample" and partial.extra["verdict"] == "incomplete"


def test_add_months_clamps() -> None:
    assert add_months(date(2026, 3, 31), -1) == date(2026, 2, 28)
    assert add_months(date(2026, 1, 15), -12) == date(2025, 1, 15)


def _rules_with_plans(plan_yaml: str) -> ElecRules:
    text = (Path(__file__).resolve().parent.parent / "config" / "rules.yaml").read_text()
    # The shipped lot plan block: `plan:` up to and including `family_plans: []`.
    old = text[text.index("    plan:  ") : text.index("    family_plans: []\n") + 21]
    return parse_rules(text.replace(old, plan_yaml), "x").rules.elec


def _doubtful(
    n: int, cls: str = "2", manufacturer: str = "ACME"
) -> list[tuple[MeterRow, Decision]]:
    """A lot of `n` whose evidence is insufficient (a third evaluable), all within MPE."""
    out = []
    for i, (row, d) in enumerate(member(i, evaluable=i % 3 == 0) for i in range(n)):
        row = row.model_copy(update={"accuracy_class": cls, "manufacturer": manufacturer})
        d.evidence["error_ci_pct"] = [-0.3, 0.5] if i % 3 == 0 else None
        if i % 3:
            d.evidence["error_pct"] = None
        out.append((row, d))
    return out


def test_the_rules_pick_the_plan_by_the_lots_family() -> None:
    rules = _rules_with_plans(
        "    plan: {kind: iso2859-1, aql: 1.0}\n"
        "    family_plans:\n"
        "      - family: {manufacturer: ACME, accuracy_class: '2'}\n"
        "        plan: {kind: iso2859-2, lq: 5.0}\n"
    )

    def decide(members: list[tuple[MeterRow, Decision]]) -> Decision:
        return decide_lot(
            "L1", members, date(2026, 6, 1), rules.lot, rules.error_limit, None, STAMP
        )

    lq = decide(_doubtful(600))
    assert lq.decision == "resample"
    plan = lq.extra["plan"]
    assert (plan["kind"], plan["lq"], plan["aql"]) == ("iso2859-2", 5.0, None)
    assert (plan["sample_size"], plan["accept"], plan["reject"]) == (80, 1, 2)
    assert plan["name"] == "ISO 2859-2 procedure A, LQ 5 %"
    assert len(lq.extra["drawn"]) == 80
    other = decide(_doubtful(600, manufacturer="Other"))
    assert other.extra["plan"]["kind"] == "iso2859-1" and other.extra["plan"]["aql"] == 1.0
    assert other.extra["plan"]["sample_size"] == 80 and other.extra["plan"]["accept"] == 2


def test_a_lot_decision_carries_its_operating_characteristic() -> None:
    rules = _rules_with_plans("    plan: {kind: iso2859-2, lq: 5.0}\n")
    members = _doubtful(60)  # n=34 of 60: hypergeometric
    d = decide_lot("L1", members, date(2026, 6, 1), rules.lot, rules.error_limit, None, STAMP)
    oc = d.extra["oc"]
    assert oc["model"] == "hypergeometric"
    # 5 % of 60 = 3 meters; none of 3 among 34 drawn from 60.
    assert oc["pa_at_lq"] == pytest.approx(math.comb(57, 34) / math.comb(60, 34), abs=1e-4)
    # Estimated meters 0.1 ± 0.4 % against an MPE of 2 %: next to none beyond it.
    share = d.evidence["estimated_nonconforming_share"]
    assert 0 <= share < 1e-4 and oc["pa_at_estimate"] > 0.99


def test_the_estimated_nonconforming_share_counts_faulty_and_likely_beyond_mpe() -> None:
    members = _doubtful(30)
    members[1] = (members[1][0], replace(members[1][1], state="faulty"))
    # Meter 0: estimate 2.0 % on the MPE of 2 %: half likely beyond.
    members[0][1].evidence.update(error_pct=2.0, error_ci_pct=[1.5, 2.5])
    share = estimated_nonconforming_share(members, RULES.error_limit)
    assert share is not None
    # 1 faulty + 0.5 for meter 0 + ~0 for 9 others estimated; 19 unestimated at the
    # estimated ones' mean (0.5 / 10).
    assert share == pytest.approx((1 + 0.5 + 19 * 0.05) / 30, abs=1e-3)


def test_no_estimate_no_share() -> None:
    members = [member(i, state="unknown", error=None, evaluable=False) for i in range(20)]
    assert estimated_nonconforming_share(members, RULES.error_limit) is None
    d = lot(members)
    assert d.evidence["estimated_nonconforming_share"] is None
    assert d.extra["oc"]["pa_at_estimate"] is None and d.extra["oc"]["pa_at_aql"] > 0.5


def test_no_evaluable_meter_is_one_lack_of_evidence_and_no_alert() -> None:
    members = [member(i, state="unknown", error=None, evaluable=False) for i in range(60)]
    d = lot(members)
    assert (d.decision, d.state) == ("resample", "unknown")
    # not "too few evaluable" and "no error distribution": one reason, for one lack
    assert [r.rule for r in d.reasons] == ["lot.evaluable_share"]
    assert conditions_of([d], 0) == []  # sampled, shown on its page, not an incident


def test_borderline_evidence_is_one_alert_for_the_lot() -> None:
    members = [member(i, state="suspect" if i < 3 else "normal", error=2.5) for i in range(60)]
    d = lot(members)
    assert (d.decision, d.state) == ("resample", "suspect")
    assert [r.rule for r in d.reasons] == ["lot.suspect_share", "lot.error_quantile"]
    [c] = conditions_of([d], 0)
    assert (c.kind, c.lot, c.rule, c.severity) == ("lot", "L1", "lot.suspect_share", "major")
    assert [r["rule"] for r in c.evidence["reasons"]] == [r.rule for r in d.reasons]


def test_faulty_meters_before_the_horizon_say_why_the_lot_is_watched() -> None:
    members = [member(i, state="faulty" if i < 2 else "normal") for i in range(60)]
    d = lot(members, as_of=date(2025, 6, 1))
    assert (d.decision, d.state) == ("keep", "watch")
    assert [r.rule for r in d.reasons] == ["lot.faulty_share", "lot.horizon"]
    [c] = conditions_of([d], 0)
    assert (c.rule, c.severity) == ("lot.faulty_share", "minor")
