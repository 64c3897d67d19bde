"""Findings → one decision per meter, with the reasons and evidence behind it.

Rules produce `Finding`s (a state they imply, an action if any, and the reason);
`decide_meter` combines them: the worst state wins, a faulty meter is replaced,
a suspect one or one with an inspection finding gets an on-site check
(`resample`), an extended lot extends its healthy meters, and anything else is
kept. Too little data is `unknown`, never `normal`.

Every finding also has the alert severity it carries (`severity_for`), from one
source: its rule block's `severity` in rules.yaml, bounded by what the finding
calls for. The decision's reasons carry it, and alerts read it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Literal

from monitor.core.rulebook import Severity

State = Literal["normal", "watch", "suspect", "faulty", "unknown"]
Action = Literal["keep", "extend", "resample", "replace"]
SEVERITY_OF_STATE = {"normal": 0, "unknown": 1, "watch": 2, "suspect": 3, "faulty": 4}
SEVERITY_RANK: dict[str, int] = {"info": 0, "minor": 1, "major": 2, "critical": 3}


def severity_for(state: State, inspect: bool, configured: Severity) -> Severity:
    """The alert severity of a finding: its rule's configured severity, bounded by its state.

    - `faulty` (the meter is replaced): `critical`, whatever the block says;
    - `suspect`, or any finding that orders an inspection: the configured severity;
    - `watch` (kept, in a warning band): the configured severity, at most `minor`;
    - `unknown` and `normal`: `info`, which raises no alert ("not enough data" is a
      state shown on the pages, not an incident).
    """
    if state == "faulty":
        return "critical"
    if state == "suspect" or inspect:
        return configured
    if state == "watch":
        return configured if SEVERITY_RANK[configured] < SEVERITY_RANK["minor"] else "minor"
    return "info"


Occurrence = tuple[str, int]
"""One distinct event a finding rests on: (key unique for its subject, event time ms)."""


@dataclass(frozen=True)
class Reason:
    """Why: the rule, the measured value, the threshold it was held against, in words.

    `severity` is the alert severity of the finding behind it (`severity_for`);
    `info` raises no alert. `occurrences` are the distinct events an event rule found
    (empty for a state condition); alerts count them (docs/decisions.md, what `count`
    counts). They stay out of the decision JSON: the detail says how many there were.
    """

    rule: str
    value: Any
    threshold: Any
    detail: str
    severity: Severity = "info"
    occurrences: tuple[Occurrence, ...] = field(default=(), compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
            "severity": self.severity,
        }


@dataclass(frozen=True)
class Finding:
    """What one rule concluded about one subject.

    `rule_severity` is the `severity` of the rule's block in rules.yaml; the finding's
    own `severity` follows from it and the state (`severity_for`).
    """

    state: State
    reason: Reason
    inspect: bool = False  # an on-site visit is due even if metrology is fine (tamper)
    rule_severity: Severity = "major"

    @property
    def severity(self) -> Severity:
        """The alert severity this finding carries."""
        return severity_for(self.state, self.inspect, self.rule_severity)

    def stated(self) -> Reason:
        """The reason, carrying this finding's severity (what a decision lists)."""
        return replace(self.reason, severity=self.severity)


@dataclass(frozen=True)
class Stamp:
    """What every decision of one pass records: the event time it judged at and the rules."""

    as_of: str  # RFC 3339 UTC (format_ts)
    rules_version: str  # name@version+hash


@dataclass(frozen=True)
class Decision:
    """The decision JSON of docs/decisions.md for a meter or a lot."""

    id: str
    kind: str
    decision: Action
    state: State
    due_on: date | None
    as_of: str
    rules_version: str
    reasons: list[Reason] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    new_due_on: date | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "decision": self.decision,
            "state": self.state,
            "due_on": self.due_on.isoformat() if self.due_on else None,
            "new_due_on": self.new_due_on.isoformat() if self.new_due_on else None,
            "reasons": [r.as_dict() for r in self.reasons],
            "evidence": self.evidence,
            "as_of": self.as_of,
            "rules_version": self.rules_version,
            **self.extra,
        }


def worst_state(findings: list[Finding]) -> State:
    """The most severe state among findings; `unknown` only when nothing else is known."""
    states = [f.state for f in findings]
    if not states:
        return "unknown"
    return max(states, key=lambda s: SEVERITY_OF_STATE[s])


def action_for(state: State, findings: list[Finding], lot_extends: bool) -> Action:
    """The meter decision a state and its findings call for."""
    if state == "faulty":
        return "replace"
    if state == "suspect" or any(f.inspect for f in findings):
        return "resample"
    if lot_extends and state in ("normal", "watch", "unknown"):
        return "extend"
    return "keep"


def decide_meter(
    meter_id: str,
    kind: str,
    findings: list[Finding],
    due_on: date | None,
    lot_new_due_on: date | None,
    evidence: dict[str, Any],
    stamp: Stamp,
) -> Decision:
    """Combine a meter's findings into its decision."""
    state = worst_state(findings)
    action = action_for(state, findings, lot_new_due_on is not None)
    ordered = sorted(findings, key=lambda f: -SEVERITY_OF_STATE[f.state])
    return Decision(
        id=meter_id,
        kind=kind,
        decision=action,
        state=state,
        due_on=due_on,
        new_due_on=lot_new_due_on if action == "extend" else None,
        as_of=stamp.as_of,
        rules_version=stamp.rules_version,
        reasons=[f.stated() for f in ordered if f.state != "normal" or f.inspect]
        or [f.stated() for f in ordered],
        evidence=evidence,
    )


def decision_from_dict(body: dict[str, Any]) -> Decision:
    """Rebuild a stored decision JSON (for re-judging a lot between passes)."""
    known = {
        "id",
        "kind",
        "decision",
        "state",
        "due_on",
        "new_due_on",
        "reasons",
        "evidence",
        "as_of",
        "rules_version",
    }
    return Decision(
        id=body["id"],
        kind=body["kind"],
        decision=body["decision"],
        state=body["state"],
        due_on=date.fromisoformat(body["due_on"]) if body.get("due_on") else None,
        new_due_on=date.fromisoformat(body["new_due_on"]) if body.get("new_due_on") else None,
        as_of=body["as_of"],
        rules_version=body["rules_version"],
        reasons=[_reason(r) for r in body.get("reasons", [])],
        evidence=dict(body.get("evidence", {})),
        extra={k: v for k, v in body.items() if k not in known},
    )


def _reason(body: dict[str, Any]) -> Reason:
    """A stored reason; those stored before reasons carried a severity read as `info`."""
    severity = body.get("severity")
    return Reason(
        body["rule"],
        body.get("value"),
        body.get("threshold"),
        body.get("detail", ""),
        severity if severity in SEVERITY_RANK else "info",
    )
