"""An evaluation pass as InfluxDB points, for dashboards (deploy/grafana/).

Decisions live in the state store; a time-series database is where a utility charts
them over time next to the telemetry. `pass_lines` turns a pass into line protocol of
the result measurements of `monitor.core.schema` (`meter_state`, `lot_state`,
`district_balance`, `district_loss_daily`, `fleet_summary`); the service hands them
to the InfluxDB store after each recorded pass. A pure function of the pass, so a
replayed pass writes the same points at the same times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, time, tzinfo
from typing import Any, Protocol, cast

from monitor.core.clock import parse_ts
from monitor.core.decision import SEVERITY_OF_STATE, Decision
from monitor.core.regions import RegionIndex
from monitor.core.schema import (
    DISTRICT_BALANCE,
    DISTRICT_LOSS_DAILY,
    FLEET_SUMMARY,
    LOT_STATE,
    METER_STATE,
)
from monitor.electricity.evaluate import DistrictResult
from monitor.evaluation.runner import EvaluationResult, ExportPart, ResultExport
from monitor.store.lineproto import output_line

RegionOf = Callable[[str, str], str | None]
"""(subject kind — "meter", "lot" or "district" —, id) → its region, or None."""


def _no_region(kind: str, subject: str) -> str | None:
    return None


def pass_lines(
    result: EvaluationResult,
    zone: tzinfo = UTC,
    region_of: RegionOf = _no_region,
    part: ExportPart = "all",
) -> list[str]:
    """Every result point of one pass, as line protocol (ms precision).

    `part`: "districts" (balance and daily loss of `result.districts`, with the
    meters of those districts) or "decisions" (meters, lots, the fleet summary: the
    whole pass's) for a pass split between workers; "all" is both.
    """
    ts = parse_ts(result.as_of)
    lines: list[str | None] = []
    if part in ("all", "decisions"):
        lines += [_meter_line(d, ts, region_of) for d in result.meters.values()]
        lines += [_lot_line(d, ts, region_of) for d in result.lots.values()]
    if part in ("all", "districts"):
        dists = result.districts.values()
        lines += [_district_line(dist, result.meters, ts, region_of) for dist in dists]
        lines += [line for dist in dists for line in _daily(dist, zone, region_of)]
    if part in ("all", "decisions"):
        lines += _fleet_lines(result, ts, region_of)
    return [line for line in lines if line is not None]


def _meter_line(d: Decision, ts: int, region_of: RegionOf) -> str | None:
    ev = d.evidence
    ci = ev.get("error_ci_pct") or [None, None]
    tags = {
        "meter": d.id,
        "kind": d.kind,
        "district": ev.get("district"),
        "lot": ev.get("lot"),
        "region": region_of("meter", d.id),
    }
    fields = {
        "state": d.state,
        "decision": d.decision,
        "severity": SEVERITY_OF_STATE[d.state],
        "error_pct": ev.get("error_pct"),
        "error_ci_low_pct": ci[0],
        "error_ci_high_pct": ci[1],
        "evaluable": bool(ev.get("evaluable", ev.get("error_pct") is not None)),
        "n": ev.get("n_intervals", ev.get("n_trips")),
        "fare_mismatches": ev.get("fare_mismatches"),
        "gross_trips": ev.get("gross_trips"),
    }
    return output_line(METER_STATE, tags, fields, ts)


def _lot_line(d: Decision, ts: int, region_of: RegionOf) -> str | None:
    ev = d.evidence
    oc: dict[str, Any] = d.extra.get("oc") or {}
    fields = {
        "state": d.state,
        "decision": d.decision,
        "meters": ev.get("meters"),
        "faulty_share": ev.get("faulty_share"),
        "evaluable_share": ev.get("evaluable_share"),
        "estimated_nonconforming_share": ev.get("estimated_nonconforming_share"),
        "pa_at_estimate": oc.get("pa_at_estimate"),
    }
    return output_line(LOT_STATE, {"lot": d.id, "region": region_of("lot", d.id)}, fields, ts)


def _district_line(
    dist: DistrictResult, meters: dict[str, Decision], ts: int, region_of: RegionOf
) -> str | None:
    gates, fit = dist.gates, dist.fit
    customers = [m for m in dist.members if m != dist.master]
    fields = {
        "gates_passed": bool(gates and gates.passed),
        "line_loss_pct": gates.line_loss_pct if gates else None,
        "completeness": gates.completeness if gates else None,
        "n_intervals": gates.n_intervals if gates else None,
        "customers": len(customers),
        "evaluable": sum(
            1 for m in customers if m in meters and meters[m].evidence.get("evaluable")
        ),
        "fixed_loss_kw": fit.fixed_loss_kw if fit else None,
        "residual_rms_pct": fit.residual_rms_pct if fit else None,
    }
    tags = {"district": dist.district, "region": region_of("district", dist.district)}
    return output_line(DISTRICT_BALANCE, tags, fields, ts)


def _daily(dist: DistrictResult, zone: tzinfo, region_of: RegionOf) -> Iterator[str | None]:
    tags = {"district": dist.district, "region": region_of("district", dist.district)}
    for day in dist.daily_loss:
        start = int(datetime.combine(day.day, time(), zone).timestamp() * 1000)
        fields = {
            "line_loss_pct": day.loss_pct,
            "supplied_kwh": day.supplied_kwh,
            "intervals": day.intervals,
        }
        yield output_line(DISTRICT_LOSS_DAILY, tags, fields, start)


def _fleet_lines(result: EvaluationResult, ts: int, region_of: RegionOf) -> Iterator[str | None]:
    groups: dict[tuple[str, str | None], list[Decision]] = {}
    for d in result.meters.values():
        groups.setdefault((d.kind, region_of("meter", d.id)), []).append(d)
    for d in result.lots.values():
        groups.setdefault(("lot", region_of("lot", d.id)), []).append(d)
    for (kind, region), decisions in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or "")):
        states = Counter[str](d.state for d in decisions)
        actions = Counter[str](d.decision for d in decisions)
        fields: dict[str, int] = {"meters": len(decisions)}
        fields |= {f"state_{s}": states[s] for s in SEVERITY_OF_STATE}
        fields |= {f"decision_{a}": actions[a] for a in ("keep", "extend", "resample", "replace")}
        yield output_line(FLEET_SUMMARY, {"kind": kind, "region": region}, fields, ts)


class LineSink(Protocol):
    """A store that takes line protocol as it is (the InfluxDB store)."""

    def write_lines(self, lines: Sequence[str], measurement: str) -> None:
        """Journal the lines durably, counted under `measurement` in the metrics."""


def exporter(
    store: object, zone: tzinfo = UTC, regions: Callable[[], RegionIndex] | None = None
) -> ResultExport | None:
    """What an Evaluator hands each recorded pass to: the store's `write_lines`, if it has one.

    The embedded store has none (its users chart the API's pages, not a database).
    `regions` gives the registry's region index at the pass (points are tagged with it).
    """
    if not callable(getattr(store, "write_lines", None)):
        return None
    sink = cast(LineSink, store)

    def export(result: EvaluationResult, part: ExportPart = "all", /) -> None:
        region_of = _no_region
        if regions is not None:
            index = regions()

            def region_of(kind: str, subject: str) -> str | None:
                return index.of(kind, subject)

        sink.write_lines(pass_lines(result, zone, region_of, part), "evaluation")

    return export
