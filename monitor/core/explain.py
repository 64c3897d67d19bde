"""Reasons and evidence in words, with units: what pages, the CLI and alert messages show.

A reason's JSON keeps its fields (`rule`, `value`, `threshold`, `detail`, `severity`);
`sentence` turns one into a sentence a person reads: the rule's detail, then what was
measured against what, each number with its unit — "Register unchanged while current
flowed …: 21.63 kWh implied over the stopped run, at least 0.2 kWh to call it." Each
rule of the catalogue (monitor.core.catalogue) has its phrase here; a value of a shape
the phrase does not expect (a decision stored by an older version) falls back to a
plain rendering. Nothing rendered here shows a Python repr: no `None`, no brackets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

# (value, threshold) → what was measured against what, "" when there is nothing to add
Phrase = Callable[[Any, Any], str]


def number(value: Any) -> str:
    """A number as people write it: 23 022, 404.3, 21.63, 0.2 (no exponent, no trailing 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "unbounded" if value > 0 else ("−unbounded" if value < 0 else "not a number")
    if float(value).is_integer():
        text = f"{int(value):,}"
    else:
        size = abs(value)
        digits = 1 if size >= 100 else 2 if size >= 10 else 3 if size >= 0.01 else 6
        text = f"{value:,.{digits}f}".rstrip("0").rstrip(".")
    return text.replace(",", " ").replace("-", "−")


def signed(value: Any, unit: str = "%") -> str:
    """A signed quantity: +4.36 %, −0.5 %."""
    if not _is_number(value):
        return plain(value)
    text = number(value)
    return f"{'+' if value > 0 else ''}{text} {unit}".rstrip()


def quantity(value: Any, unit: str) -> str:
    """A number with its unit: 21.63 kWh."""
    if not _is_number(value):
        return plain(value)
    return f"{number(value)} {unit}".rstrip()


def share(value: Any) -> str:
    """A share of 1 as a percentage: 0.0526 → 5.3 %."""
    if not _is_number(value):
        return plain(value)
    pct = 100 * value
    return f"{number(round(pct, 1) if abs(pct) >= 1 or pct == 0 else round(pct, 3))} %"


def span(value: Any, fmt: Callable[[Any], str]) -> str:
    """A [low, high] pair as "low to high", each with `fmt`."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{fmt(value[0])} to {fmt(value[1])}"
    return plain(value)


def plain(value: Any) -> str:
    """Any JSON value in words: lists joined, mappings as "key value", nothing as "none"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{_words(str(k))} {plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(plain(v) for v in value) or "none"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _words(key: str) -> str:
    return key.replace("_", " ")


def _pct(value: Any) -> str:
    return quantity(value, "%")


def _given(*values: Any) -> bool:
    return all(v is not None for v in values)


def _codes(value: Any) -> str:
    return plain(value)


def _limit_pm(value: Any, threshold: Any) -> str:
    if threshold is None:
        return f"estimated error {signed(value)}, no in-service limit for its class"
    return f"estimated error {signed(value)}, limit ±{_pct(threshold)}"


def _ci_width(value: Any, threshold: Any) -> str:
    half = _pct(value) if value is not None else "unbounded"
    return f"95 % half-width {half}, at most {_pct(threshold)}"


def _reset(value: Any, threshold: Any) -> str:
    return f"register from {quantity(threshold, 'kWh')} to {quantity(value, 'kWh')}"


def _backwards(value: Any, threshold: Any) -> str:
    fell = -value if _is_number(value) else value
    allowed = -threshold if _is_number(threshold) else threshold
    return f"register fell by {quantity(fell, 'kWh')}, tolerance {quantity(allowed, 'kWh')}"


def _codes_seen(value: Any, threshold: Any) -> str:
    return f"{_codes(value)} (the rule's codes: {_codes(threshold)})"


def _none(value: Any, threshold: Any) -> str:
    return ""


PHRASES: dict[str, Phrase] = {
    "elec.estimation": _none,
    "elec.estimation.gates": _none,
    "elec.estimation.completeness": lambda v, t: (
        f"{share(v)} of meter-days collected, at least {share(t)}"
    ),
    "elec.estimation.min_intervals": lambda v, t: (
        f"{quantity(v, 'usable intervals')}, at least {number(t)}"
    ),
    "elec.estimation.solvable": lambda v, t: (
        f"{quantity(v, 'interval groups')} for {quantity(t, 'unknowns')}"
    ),
    "elec.estimation.line_loss": lambda v, t: (
        f"line loss {_pct(v)}, plausible band {span(t, _pct)}"
    ),
    "elec.estimation.residual_structure": lambda v, t: (
        f"residuals' lag-1 autocorrelation {number(v)}, at most {number(t)}"
    ),
    "elec.estimation.light_load": lambda v, t: (
        f"mean current {quantity(v, 'A')}, at least {quantity(t, 'A')}"
    ),
    "elec.estimation.observability": lambda v, t: (
        f"information ratio {number(v)}, at least {number(t)}"
    ),
    "elec.estimation.ci_width": _ci_width,
    "elec.estimation.collinear": lambda v, t: (
        f"correlation {number(v)} with another meter's estimate, at most {number(t)}"
    ),
    "elec.estimation.loss_model": lambda v, t: (
        f"estimated error {span(v, signed)} under the plausible loss models, decision lines "
        f"at ±{span(t, _pct).replace(' to ', ' and ±')}"
    ),
    "elec.estimation.misfit": lambda v, t: (
        f"loss model {plain(v)}; plausible: {plain(t)}" if v else f"plausible: {plain(t)}"
    ),
    "elec.master": _none,
    "elec.error_limit": _limit_pm,
    "elec.error_limit.watch": lambda v, t: (
        f"estimated error {signed(v)}, warning band from ±{_pct(t)}"
    ),
    "elec.function_failure.reset": _reset,
    "elec.function_failure.backwards": _backwards,
    "elec.function_failure.stopped": lambda v, t: (
        f"{quantity(v, 'kWh')} unregistered, stopped from {quantity(t, 'kWh')}"
    ),
    "elec.function_failure.fast": lambda v, t: (
        f"{quantity(v, 'kWh')} in a day, Imax·Un·24 h is {quantity(t, 'kWh')}"
    ),
    "elec.clock.offset": lambda v, t: f"clock offset {quantity(v, 's')}, limit {quantity(t, 's')}",
    "elec.clock.events": _codes_seen,
    "elec.tamper": _codes_seen,
    "elec.hardware": _codes_seen,
    "lot.due_on": _none,
    "lot.horizon": lambda v, t: f"as of {plain(v)}, the horizon opens on {plain(t)}",
    "lot.clean": _none,
    "lot.faulty_share": lambda v, t: f"{share(v)} of its meters faulty, line {share(t)}",
    "lot.suspect_share": lambda v, t: f"{share(v)} of its meters suspect, line {share(t)}",
    "lot.evaluable_share": lambda v, t: (
        f"{share(v)} of its meters with a usable estimate, at least {share(t)}"
    ),
    "lot.error_quantile": lambda v, t: (
        f"95th percentile {_pct(v)}, line {_pct(t)}" if _given(v, t) else ""
    ),
    "lot.reject_faulty_share": lambda v, t: (
        f"{share(v)} of its meters faulty, reject line {share(t)}"
    ),
    "lot.sample": _none,  # the detail says the counts, Ac and Re, and the verdict
    "taxi.distance.fleet": _none,
    "taxi.distance.min_trips": lambda v, t: f"at least {number(t)} needed",
    "taxi.distance.bias": _none,
    "taxi.distance.unproven": _none,
    "taxi.distance.guard_band": _none,
    "taxi.distance.limit": _none,
    "taxi.distance.cusum": lambda v, t: (
        f"the sum peaked at {number(v)} σ, alarm level {number(t)} σ"
    ),
    "taxi.distance.gross_trips": lambda v, t: (
        f"{quantity(v, 'gross trips')}, alarm from {number(t)} in 30 days"
    ),
    "taxi.fare.mismatch": lambda v, t: f"{share(v)} of fares, systematic from {share(t)}",
    "taxi.fare.systematic": lambda v, t: f"{share(v)} of fares, systematic from {share(t)}",
    "taxi.tariff.version": lambda v, t: f"{quantity(v, 'trips')}, none allowed",
    "taxi.tariff.overdue": lambda v, t: f"tariff {plain(v)}, deadline {plain(t)}",
    "taxi.seal.event": _none,
    "taxi.seal.heartbeat": _none,
    "taxi.param.pulses_per_km": _none,
}


def _fallback(value: Any, threshold: Any) -> str:
    if value is None and threshold is None:
        return ""
    return f"measured {plain(value)}, threshold {plain(threshold)}"


def measure(rule: str, value: Any, threshold: Any) -> str:
    """What was measured against what, in words with units ("" when the detail says all)."""
    phrase = PHRASES.get(rule, _fallback)
    try:
        return phrase(value, threshold)
    except (TypeError, ValueError, KeyError, ArithmeticError):
        # A stored value of a shape this version does not expect: say it plainly.
        return _fallback(value, threshold)


def sentence(rule: str, value: Any, threshold: Any, detail: str) -> str:
    """One reason as a sentence: its detail, then the measurement with units."""
    text = str(detail).strip() or rule
    said = measure(rule, value, threshold)
    if said:
        text = f"{text}: {said}"
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def reason_sentence(reason: Mapping[str, Any]) -> str:
    """`sentence` of a reason's JSON (`Reason.as_dict()`, or as stored)."""
    return sentence(
        str(reason.get("rule", "")),
        reason.get("value"),
        reason.get("threshold"),
        str(reason.get("detail") or ""),
    )


# -- evidence ------------------------------------------------------------------------

_SUFFIX_UNITS = (
    ("_kwh", "kWh"),
    ("_kw", "kW"),
    ("_cny", "CNY"),
    ("_a", "A"),
    ("_s", "s"),
    ("_km", "km"),
)


# Percentages with a sign that means something (over- or under-registering).
_SIGNED_PCT = frozenset(
    (
        "error_pct",
        "error_ci_pct",
        "error_ci_relative_pct",
        "reference_pct",
        "fleet_median_pct",
        "loss_model_range_pct",
    )
)


def evidence_value(key: str, value: Any, when: Callable[[str], str] = str) -> str:
    """One evidence field in words, its unit read from its name (docs/decisions.md):
    `…_share` and `completeness` are shares of 1 shown in percent, `…_pct` percent,
    `…_kwh`, `…_a`, `…_cny`, `…_s` their units, `…_ts` an instant shown by `when`;
    nested mappings field by field."""
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        parts = [f"{_words(str(k))} {evidence_value(str(k), v, when)}" for k, v in value.items()]
        return "; ".join(parts) or "–"
    if key.endswith("_ts") and isinstance(value, str):
        return when(value)
    if key.endswith("_share") or key in ("completeness", "interval_completeness"):
        return span(value, share) if isinstance(value, list | tuple) else share(value)
    if key.endswith("_pct"):
        fmt = signed if key in _SIGNED_PCT else _pct
        return span(value, fmt) if isinstance(value, list | tuple) else fmt(value)
    for suffix, unit in _SUFFIX_UNITS:
        if key.endswith(suffix) and _is_number(value):
            return quantity(value, unit)
    return plain(value)
