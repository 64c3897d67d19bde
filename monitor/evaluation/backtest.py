"""Backtest a rules file: re-run stored history under it and under the rules in force.

For each day of the last `since_days` (as of the newest telemetry and back a
day at a time) both rule books evaluate the same stored telemetry in dry runs;
every meter or lot whose decision or state differs is listed. Nothing is
stored or published.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.core.clock import DAY_MS
from monitor.core.decision import Decision
from monitor.core.explain import sentence
from monitor.core.rulebook import RuleBook
from monitor.evaluation.runner import Evaluator


@dataclass(frozen=True)
class Difference:
    """One subject decided differently under the candidate rules."""

    as_of: str
    subject: str
    kind: str
    before: tuple[str, str]
    after: tuple[str, str]
    reason: str


def _diff(
    as_of: str, current: dict[str, Decision], candidate: dict[str, Decision]
) -> list[Difference]:
    out = []
    for subject in sorted(current.keys() | candidate.keys()):
        a, b = current.get(subject), candidate.get(subject)
        before = (a.decision, a.state) if a else ("-", "-")
        after = (b.decision, b.state) if b else ("-", "-")
        if before != after:
            why = b.reasons[0] if b and b.reasons else None
            reason = (
                f"{why.rule}: {sentence(why.rule, why.value, why.threshold, why.detail)}"
                if why
                else ""
            )
            either = b or a
            kind = either.kind if either is not None else ""
            out.append(Difference(as_of, subject, kind, before, after, reason))
    return out


def backtest(
    evaluator: Evaluator, current: RuleBook, candidate: RuleBook, latest_ms: int, since_days: int
) -> list[Difference]:
    """Differences between the two rule books over the last `since_days` days."""
    out: list[Difference] = []
    for back in range(since_days, -1, -1):
        as_of = latest_ms - back * DAY_MS
        a = evaluator.run(as_of, current, record=False)
        b = evaluator.run(as_of, candidate, record=False)
        out += _diff(a.as_of, a.meters, b.meters)
        out += _diff(a.as_of, a.lots, b.lots)
    return out
