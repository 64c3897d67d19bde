"""Lot decisions: extend a healthy lot, sample a doubtful one, replace a failed one."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date
from statistics import NormalDist
from typing import Any

import numpy as np

from monitor.core.decision import Decision, Reason, Stamp, State, severity_for
from monitor.core.registry import MeterRow, add_years
from monitor.core.rulebook import ErrorLimitRule, LotRule, SamplingPlan
from monitor.electricity.sampling import (
    Plan,
    draw_sample,
    judge,
    operating_characteristic,
    plan,
)


@dataclass(frozen=True)
class SampleResult:
    """A laboratory verification result of one drawn meter."""

    meter: str
    error_pct: float | None
    passed: bool


@dataclass(frozen=True)
class Sampling:
    """A lot's sampling in progress: the plan, who was drawn, what the lab found."""

    due_on: str
    plan: dict[str, Any]
    drawn: list[str]
    results: list[SampleResult]


def add_months(day: date, months: int) -> date:
    """`day` moved by whole months (clamped to the month's last day)."""
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for d in (day.day, 30, 29, 28):
        try:
            return date(year, month, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def _beyond_mpe_probability(evidence: dict[str, Any], mpe_pct: float, z: float) -> float | None:
    """P(|error| > MPE) of one meter from its estimate and interval, or None without one.

    A normal around the estimate whose standard deviation is the interval's half-width
    over z (the interval's two-sided quantile): an estimate of 1.9 ± 0.4 % against an
    MPE of 2 % is about as likely beyond as within.
    """
    error, ci = evidence.get("error_pct"), evidence.get("error_ci_pct")
    if not evidence.get("evaluable") or error is None or not ci or None in ci:
        return None
    sd = max((ci[1] - ci[0]) / 2 / z, 1e-9)
    dist = NormalDist(error, sd)
    return dist.cdf(-mpe_pct) + 1.0 - dist.cdf(mpe_pct)


def estimated_nonconforming_share(
    members: list[tuple[MeterRow, Decision]],
    limits: ErrorLimitRule,
    confidence: float = 0.95,
) -> float | None:
    """The lot's expected share of meters that would fail verification (error beyond MPE).

    Faulty meters count as nonconforming; a meter with an estimate counts with its
    probability of being beyond its class's MPE; the others (no usable estimate) are
    taken to be like the estimated ones. None when no meter has an estimate and none
    is faulty: the share is not known, and no guess is made.
    """
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    faulty, probabilities, others = 0, [], 0
    for row, d in members:
        mpe = limits.verification_mpe_pct.get(row.accuracy_class or "")
        p = None if mpe is None else _beyond_mpe_probability(d.evidence, mpe, z)
        if d.state == "faulty":
            faulty += 1
        elif p is not None:
            probabilities.append(p)
        else:
            others += 1
    if not probabilities and others:
        return None
    if not members:
        return None
    mean = sum(probabilities) / len(probabilities) if probabilities else 0.0
    return (faulty + sum(probabilities) + others * mean) / len(members)


def indicators(members: list[tuple[MeterRow, Decision]], limits: ErrorLimitRule) -> dict[str, Any]:
    """Faulty and suspect shares, evaluable share and error spread of a lot."""
    n = len(members)
    states = Counter(d.state for _, d in members)
    errors = [
        abs(d.evidence["error_pct"])
        for _, d in members
        if d.evidence.get("evaluable") and d.evidence.get("error_pct") is not None
    ]
    classes = Counter(r.accuracy_class for r, _ in members if r.accuracy_class)
    cls = classes.most_common(1)[0][0] if classes else None
    return {
        "meters": n,
        "faulty_share": states["faulty"] / n if n else 0.0,
        "suspect_share": states["suspect"] / n if n else 0.0,
        "watch_share": states["watch"] / n if n else 0.0,
        "evaluable_share": len(errors) / n if n else 0.0,
        "error_quantile_pct": float(np.quantile(errors, 0.95)) if errors else None,
        "accuracy_class": cls,
        "mpe_pct": limits.verification_mpe_pct.get(cls or ""),
        "inspections": sum(
            1 for _, d in members if d.decision == "resample" and d.state != "suspect"
        ),
    }


def _reason(rule: str, value: Any, threshold: Any, detail: str) -> Reason:
    return Reason(rule, round(value, 4) if isinstance(value, float) else value, threshold, detail)


def _clean(ind: dict[str, Any], rule: LotRule) -> list[Reason]:
    """What stands between the lot and an extension (empty: it is clean)."""
    out = []
    if ind["faulty_share"] > rule.max_faulty_share:
        out.append(
            _reason(
                "lot.faulty_share",
                ind["faulty_share"],
                rule.max_faulty_share,
                "faulty share above the extension line",
            )
        )
    if ind["suspect_share"] > rule.max_suspect_share:
        out.append(
            _reason(
                "lot.suspect_share",
                ind["suspect_share"],
                rule.max_suspect_share,
                "suspect share above the extension line",
            )
        )
    if ind["evaluable_share"] < rule.min_evaluable_share:
        out.append(
            _reason(
                "lot.evaluable_share",
                ind["evaluable_share"],
                rule.min_evaluable_share,
                "too few meters with a usable error estimate: evidence insufficient",
            )
        )
    q, mpe = ind["error_quantile_pct"], ind["mpe_pct"]
    if q is None or mpe is None or math.isnan(q):
        # With too few evaluable meters this is the same lack of evidence, said once.
        if not any(r.rule == "lot.evaluable_share" for r in out):
            out.append(_reason("lot.error_quantile", q, mpe, "no error distribution to judge"))
    elif q > rule.error_quantile_max_fraction * mpe:
        out.append(
            _reason(
                "lot.error_quantile",
                q,
                round(rule.error_quantile_max_fraction * mpe, 4),
                f"95th percentile of |error| above {rule.error_quantile_max_fraction:g}×MPE",
            )
        )
    return out


def decide_lot(
    lot: str,
    members: list[tuple[MeterRow, Decision]],
    as_of: date,
    rule: LotRule,
    limits: ErrorLimitRule,
    sampling: Sampling | None,
    stamp: Stamp,
    confidence: float = 0.95,
) -> Decision:
    """The lot's decision at `as_of` (the day of `stamp.as_of`).

    Its reasons carry the severity of the lot's state under the lot rule's `severity`
    (`severity_for`): a lot whose only problem is too little evidence is sampled, and
    says so on its page, without raising an alert. `confidence` is the two-sided level
    of the meters' error intervals (the estimation rule's), which the lot's estimated
    nonconforming share reads them at.
    """
    decided = _decide_lot(lot, members, as_of, rule, limits, sampling, stamp, confidence)
    severity = severity_for(decided.state, False, rule.severity)
    return replace(decided, reasons=[replace(r, severity=severity) for r in decided.reasons])


def _decide_lot(
    lot: str,
    members: list[tuple[MeterRow, Decision]],
    as_of: date,
    rule: LotRule,
    limits: ErrorLimitRule,
    sampling: Sampling | None,
    stamp: Stamp,
    confidence: float,
) -> Decision:
    dues = [r.due_on for r, _ in members if r.due_on is not None]
    ind = indicators(members, limits)
    share = estimated_nonconforming_share(members, limits, confidence)
    ind["estimated_nonconforming_share"] = None if share is None else round(share, 4)
    due = min(dues) if dues else None
    base = Decision(
        lot, "lot", "keep", "unknown", due, stamp.as_of, stamp.rules_version, evidence=ind
    )
    if due is None:
        return replace(
            base, reasons=[Reason("lot.due_on", None, None, "no due date in the registry")]
        )
    opens = add_months(due, -rule.horizon_months)
    if as_of < opens:
        horizon = Reason(
            "lot.horizon",
            as_of.isoformat(),
            opens.isoformat(),
            f"evaluated from {rule.horizon_months} months before the due date",
        )
        if ind["faulty_share"] <= rule.max_faulty_share:
            return replace(base, state="normal", reasons=[horizon])
        faulty = _reason(
            "lot.faulty_share",
            ind["faulty_share"],
            rule.max_faulty_share,
            "faulty share above the extension line before the lot is due for a decision",
        )
        return replace(base, state="watch", reasons=[faulty, horizon])
    if ind["faulty_share"] > rule.reject_faulty_share:
        return _replace(
            base,
            [
                _reason(
                    "lot.reject_faulty_share",
                    ind["faulty_share"],
                    rule.reject_faulty_share,
                    "faulty share alone rejects the lot",
                )
            ],
        )
    if sampling is not None and sampling.due_on == due.isoformat():
        return _from_sample(base, sampling, due, rule, share)
    blockers = _clean(ind, rule)
    if not blockers:
        return _extend(
            base,
            due,
            rule,
            [
                Reason(
                    "lot.clean",
                    "all indicators",
                    "extension lines",
                    "evidence clean and sufficient",
                )
            ],
        )
    return _resample(base, members, due, rule, blockers, share)


def _extend(base: Decision, due: date, rule: LotRule, reasons: list[Reason]) -> Decision:
    new_due = add_years(due, rule.extend_years)
    return replace(base, decision="extend", state="normal", new_due_on=new_due, reasons=reasons)


def _replace(base: Decision, reasons: list[Reason]) -> Decision:
    return replace(base, decision="replace", state="faulty", reasons=reasons)


def lot_family(members: list[tuple[MeterRow, Decision]]) -> tuple[str | None, ...]:
    """(manufacturer, model, accuracy class) of a lot: what most of its meters say."""

    def most(values: list[str | None]) -> str | None:
        known = Counter(v for v in values if v)
        return known.most_common(1)[0][0] if known else None

    rows = [r for r, _ in members]
    return (
        most([r.manufacturer for r in rows]),
        most([r.model for r in rows]),
        most([r.accuracy_class for r in rows]),
    )


def lot_plan(members: list[tuple[MeterRow, Decision]], rule: LotRule) -> Plan:
    """The sampling plan the rules give this lot's family, sized to the lot."""
    chosen: SamplingPlan = rule.plan_for(*lot_family(members))
    return plan(chosen.kind, len(members), chosen.quality_pct)


def _resample(
    base: Decision,
    members: list[tuple[MeterRow, Decision]],
    due: date,
    rule: LotRule,
    reasons: list[Reason],
    share: float | None,
) -> Decision:
    p = lot_plan(members, rule)
    # Seeded by lot and due date: re-evaluating draws the same meters, and the
    # seed is recorded, so anyone can redo the draw.
    seed = f"{base.id}|{due.isoformat()}"
    drawn = draw_sample([r.meter_id for r, _ in members], p.sample_size, seed)
    # Too little evidence alone leaves the lot `unknown`: sampled, not suspected.
    state: State = "unknown" if all(_lacks_evidence(r) for r in reasons) else "suspect"
    extra = {
        "plan": p.as_dict(),
        "oc": operating_characteristic(p, share),
        "seed": seed,
        "drawn": drawn,
        "sample_results": [],
    }
    return replace(base, decision="resample", state=state, reasons=reasons, extra=extra)


def _lacks_evidence(r: Reason) -> bool:
    """Too few meters with a usable estimate, or no error distribution: not enough data."""
    return r.rule == "lot.evaluable_share" or (r.rule == "lot.error_quantile" and r.value is None)


def _from_sample(
    base: Decision, sampling: Sampling, due: date, rule: LotRule, share: float | None
) -> Decision:
    p = Plan.from_dict(sampling.plan)
    bad = sum(1 for r in sampling.results if not r.passed)
    verdict = judge(p, bad, len(sampling.results))
    extra = {
        "plan": p.as_dict(),
        "oc": operating_characteristic(p, share),
        "drawn": sampling.drawn,
        "verdict": verdict,
        "sample_results": [r.__dict__ for r in sampling.results],
    }
    reason = Reason(
        "lot.sample",
        bad,
        {"accept": p.accept, "reject": p.reject},
        f"{len(sampling.results)} of {p.sample_size} inspected, {bad} nonconforming "
        f"(Ac {p.accept}, Re {p.reject}): {verdict}",
    )
    if verdict == "accept":
        decided = _extend(base, due, rule, [reason])
    elif verdict == "reject":
        decided = _replace(base, [reason])
    else:
        decided = replace(base, decision="resample", state="suspect", reasons=[reason])
    return replace(decided, extra=extra)
