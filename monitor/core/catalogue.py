"""The rule catalogue: every rule name a reason can carry, the rules.yaml block it
belongs to, and the states its findings give (docs/decisions.md, "Rules and their
findings").

The block is where the rule's thresholds and `severity` live; it is also the unit of
an alert: one alert per subject and block (a taxi whose distance is off is one alert,
however many distance rules found it).
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.core.decision import State


@dataclass(frozen=True)
class RuleEntry:
    """What the catalogue knows of one rule name."""

    block: str  # dotted path of its block in rules.yaml, e.g. "taxi.distance"
    subject: str  # meter, lot or district
    states: tuple[State, ...]  # the states its findings give, worst first
    inspect: bool = False  # its findings order an inspection


def _entries(
    block: str, subject: str, states: tuple[State, ...], *names: str
) -> dict[str, RuleEntry]:
    return {name: RuleEntry(block, subject, states) for name in names}


CATALOGUE: dict[str, RuleEntry] = {
    **_entries(
        "elec.estimation", "meter", ("unknown",), "elec.estimation", "elec.estimation.gates"
    ),
    **_entries(
        "elec.estimation",
        "district",
        ("unknown",),
        "elec.estimation.completeness",
        "elec.estimation.min_intervals",
        "elec.estimation.solvable",
    ),
    # A line loss outside its band is an incident of the district (topology or theft), and
    # so is structure in its residuals no plain loss model explains (a night load, …), and
    # residuals that follow each other (an unmetered load no loss model describes).
    **_entries(
        "elec.estimation",
        "district",
        ("suspect",),
        "elec.estimation.line_loss",
        "elec.estimation.misfit",
        "elec.estimation.residual_structure",
    ),
    **_entries(
        "elec.estimation",
        "meter",
        ("unknown",),
        "elec.estimation.light_load",
        "elec.estimation.observability",
        "elec.estimation.ci_width",
        "elec.estimation.collinear",
        "elec.estimation.loss_model",
    ),
    **_entries("elec.estimation", "meter", ("normal",), "elec.master"),
    **_entries("elec.error_limit", "meter", ("suspect", "normal"), "elec.error_limit"),
    **_entries("elec.error_limit", "meter", ("watch",), "elec.error_limit.watch"),
    **_entries(
        "elec.function_failure",
        "meter",
        ("faulty",),
        "elec.function_failure.backwards",
        "elec.function_failure.stopped",
        "elec.function_failure.fast",
    ),
    **_entries("elec.function_failure", "meter", ("watch",), "elec.function_failure.reset"),
    **_entries("elec.clock", "meter", ("watch",), "elec.clock.offset", "elec.clock.events"),
    "elec.tamper": RuleEntry("elec.tamper", "meter", ("normal",), inspect=True),
    **_entries("elec.hardware", "meter", ("faulty",), "elec.hardware"),
    **_entries("elec.lot", "lot", ("unknown",), "lot.due_on"),
    **_entries("elec.lot", "lot", ("watch", "normal"), "lot.horizon"),
    **_entries("elec.lot", "lot", ("normal",), "lot.clean"),
    # Before the horizon a faulty share above the extension line is a `watch`.
    **_entries("elec.lot", "lot", ("suspect", "watch"), "lot.faulty_share"),
    **_entries("elec.lot", "lot", ("suspect",), "lot.suspect_share", "lot.error_quantile"),
    **_entries("elec.lot", "lot", ("suspect", "unknown"), "lot.evaluable_share"),
    **_entries("elec.lot", "lot", ("faulty",), "lot.reject_faulty_share"),
    **_entries("elec.lot", "lot", ("faulty", "suspect", "normal"), "lot.sample"),
    **_entries(
        "taxi.distance", "meter", ("unknown",), "taxi.distance.fleet", "taxi.distance.min_trips"
    ),
    **_entries(
        "taxi.distance", "meter", ("normal",), "taxi.distance.bias", "taxi.distance.unproven"
    ),
    **_entries("taxi.distance", "meter", ("faulty",), "taxi.distance.limit"),
    **_entries(
        "taxi.distance",
        "meter",
        ("suspect",),
        "taxi.distance.guard_band",
        "taxi.distance.cusum",
        "taxi.distance.gross_trips",
    ),
    "taxi.fare.mismatch": RuleEntry("taxi.fare", "meter", ("suspect",), inspect=True),
    "taxi.fare.systematic": RuleEntry("taxi.fare", "meter", ("suspect",), inspect=True),
    "taxi.tariff.version": RuleEntry("taxi.tariff", "meter", ("suspect",), inspect=True),
    "taxi.tariff.overdue": RuleEntry("taxi.tariff", "meter", ("suspect",), inspect=True),
    # Covered by an open work order, a seal finding is `normal` and orders nothing.
    "taxi.seal.event": RuleEntry("taxi.seal", "meter", ("suspect", "normal"), inspect=True),
    "taxi.seal.heartbeat": RuleEntry("taxi.seal", "meter", ("suspect", "normal"), inspect=True),
    "taxi.param.pulses_per_km": RuleEntry(
        "taxi.seal", "meter", ("suspect", "normal"), inspect=True
    ),
}


def block_of(rule: str) -> str:
    """The rules.yaml block of a rule name; a name the catalogue lacks is its own block."""
    entry = CATALOGUE.get(rule)
    return entry.block if entry is not None else rule
