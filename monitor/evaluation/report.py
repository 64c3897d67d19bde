"""Plain-text tables of an evaluation pass (the `monitor evaluate` output)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from monitor.core.decision import Decision
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


def _first_reason(d: Decision) -> str:
    if not d.reasons:
        return ""
    r = d.reasons[0]
    return f"{r.rule}: {r.value} vs {r.threshold}"


def _ci(d: Decision) -> str:
    ci = d.evidence.get("error_ci_pct")
    return f"[{ci[0]}, {ci[1]}]" if ci and None not in ci else ""


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
        f"meters {s['meters']}: decisions {s['meter_decisions']}, states {s['meter_states']}\n"
    )
    out.write(
        f"districts {s['districts']} ({s['districts_passing_gates']} pass the data gates); "
        f"lots {s['lots']}: {s['lot_decisions']}\n\n"
    )
    shown = [d for d in meters if verbose or worth_showing(d)]
    rows = [
        (
            d.id,
            d.evidence.get("district"),
            d.state,
            d.decision,
            d.evidence.get("error_pct"),
            _ci(d),
            _first_reason(d),
        )
        for d in shown
    ]
    out.write(
        table(["meter", "district", "state", "decision", "error_pct", "95% CI", "reason"], rows)
    )
    out.write("\n\n")
    lot_rows = [
        (
            d.id,
            d.due_on,
            d.decision,
            d.new_due_on,
            d.extra.get("plan", {}).get("sample_size"),
            _first_reason(d),
        )
        for d in lots
    ]
    out.write(table(["lot", "due_on", "decision", "new_due_on", "sample", "reason"], lot_rows))
    out.write("\n")
