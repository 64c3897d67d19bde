"""Plain-text tables of an evaluation pass (the `monitor evaluate` output).

Every reason of a decision is shown, in words with units (monitor.core.explain), one
line each under its meter or lot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from monitor.core.decision import Decision
from monitor.core.explain import evidence_value, sentence
from monitor.evaluation.runner import EvaluationResult


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def reason_lines(d: Decision) -> list[str]:
    """Every reason of a decision, worst first: the rule, then the reason in words."""
    return [f"{r.rule}: {sentence(r.rule, r.value, r.threshold, r.detail)}" for r in d.reasons]


def _with_reasons(row: tuple[object, ...], d: Decision) -> list[tuple[object, ...]]:
    """A decision's row with its first reason, then one row per further reason."""
    lines = reason_lines(d) or [""]
    blank = ("",) * len(row)
    return [(*row, lines[0]), *((*blank, line) for line in lines[1:])]


def _error(d: Decision) -> str:
    error = d.evidence.get("error_pct")
    return "" if error is None else evidence_value("error_pct", error)


def _ci(d: Decision) -> str:
    ci = d.evidence.get("error_ci_pct")
    return evidence_value("error_ci_pct", ci) if ci and None not in ci else ""


def _counts(counts: dict[str, int]) -> str:
    """{"keep": 3, "resample": 1} → "keep 3, resample 1"."""
    return ", ".join(f"{k} {n}" for k, n in counts.items()) or "none"


def worth_showing(d: Decision) -> bool:
    """A meter decision the table lists without `--all`: an action or a state beyond normal."""
    return d.decision not in ("keep", "extend") or d.state in ("watch", "suspect", "faulty")


def print_evaluation(result: EvaluationResult, out: TextIO, verbose: bool = False) -> None:
    """Summary counts, then meters with a finding (all with `verbose`), then lots."""
    print_report(
        result.summary(), list(result.meters.values()), list(result.lots.values()), out, verbose
    )


def print_report(
    s: dict[str, Any],
    meters: Sequence[Decision],
    lots: Sequence[Decision],
    out: TextIO,
    verbose: bool = False,
) -> None:
    """The table of a pass from its summary and decisions (local, or from the API)."""
    out.write(f"as of {s['as_of']}  rules {s['rules_version']}\n")
    out.write(
        f"meters {s['meters']}: decisions {_counts(s['meter_decisions'])}; "
        f"states {_counts(s['meter_states'])}\n"
    )
    out.write(
        f"districts {s['districts']} ({s['districts_passing_gates']} pass the data gates); "
        f"lots {s['lots']}: {_counts(s['lot_decisions'])}\n\n"
    )
    shown = [d for d in meters if verbose or worth_showing(d)]
    rows = [
        line
        for d in shown
        for line in _with_reasons(
            (d.id, d.evidence.get("district"), d.state, d.decision, _error(d), _ci(d)), d
        )
    ]
    out.write(table(["meter", "district", "state", "decision", "error", "95% CI", "why"], rows))
    out.write("\n\n")
    lot_rows = [
        line
        for d in lots
        for line in _with_reasons(
            (d.id, d.due_on, d.decision, d.new_due_on, d.extra.get("plan", {}).get("sample_size")),
            d,
        )
    ]
    out.write(table(["lot", "due_on", "decision", "new_due_on", "sample", "why"], lot_rows))
    out.write("\n")
