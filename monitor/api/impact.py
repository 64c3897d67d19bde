"""Policy impact per rules version: the report, a comparison of two versions, the versions."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from monitor.api.context import ApiContext, decode_cursor, encode_cursor, time_param
from monitor.api.regions import RegionCache, known_region
from monitor.api.rules import desk_of
from monitor.core.clock import ms_to_datetime
from monitor.core.regions import RegionIndex
from monitor.core.rulebook import RuleBook
from monitor.evaluation.impact import ImpactQuery, delta, impact
from monitor.evaluation.runner import EvaluationResult

# Dry runs kept: a report and its comparison at one as_of are two passes.
_KEEP_RUNS = 2


@dataclass(frozen=True)
class ImpactRequest:
    """What a report is asked for; every field already checked."""

    book: RuleBook
    other: RuleBook | None
    as_of_ms: int
    query: ImpactQuery


class ImpactReports:
    """Impact reports over the context's telemetry: each rules version's dry run, cached."""

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._regions = RegionCache(ctx.state)
        self._runs: OrderedDict[tuple[str, int, int], EvaluationResult] = OrderedDict()

    def regions(self) -> RegionIndex:
        """The registry's region index."""
        return self._regions()

    def request(
        self,
        rules: str,
        compare: str | None,
        start: str | None,
        end: str | None,
        region: str | None,
        as_of: str | None,
    ) -> ImpactRequest:
        """The request checked: 404 for an unknown rules version, 4xx for bad dates."""
        as_of_ms = time_param("as_of", as_of) or self._ctx.evaluator.default_as_of()
        if as_of_ms is None:
            raise HTTPException(409, "no telemetry yet and no as_of given: nothing to report on")
        first = _day("start", start) or ms_to_datetime(as_of_ms).date()
        last = _day("end", end) or _a_year_after(first)
        if last < first:
            raise HTTPException(422, f"end {last} is before start {first}")
        where = known_region(self._regions(), region)
        return ImpactRequest(
            self._book(rules),
            self._book(compare) if compare else None,
            as_of_ms,
            ImpactQuery(first, last, where),
        )

    def _book(self, name: str) -> RuleBook:
        desk = desk_of(self._ctx)
        book = desk.book(name)
        if book is None:
            known = ", ".join(["in-force", "candidate", *(b.version for b in desk.versions())])
            raise HTTPException(404, f"no rules version {name!r} (known: {known})")
        return book

    def report(self, req: ImpactRequest) -> dict[str, Any]:
        """The report, and with `other` the comparison and the difference (other − book)."""
        first = self._one(req.book, req)
        if req.other is None:
            return {"report": first, "compare": None, "delta": None}
        second = self._one(req.other, req)
        return {"report": first, "compare": second, "delta": delta(first, second)}

    def _one(self, book: RuleBook, req: ImpactRequest) -> dict[str, Any]:
        state = self._ctx.state
        key = (book.digest, req.as_of_ms, state.registry_version())
        result = self._runs.get(key)
        if result is None:
            result = self._ctx.evaluator.run(req.as_of_ms, book, record=False)
            self._runs[key] = result
            while len(self._runs) > _KEEP_RUNS:
                self._runs.popitem(last=False)
        rows = {r.meter_id: r for r in state.registry_rows()}
        costs = self._ctx.settings.impact
        return impact(result, rows, book.rules, costs, self._regions(), req.query)


def _day(name: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def _a_year_after(day: date) -> date:
    try:
        return day.replace(year=day.year + 1) - timedelta(days=1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28) - timedelta(days=1)


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()
    reports = ImpactReports(ctx)
    page_max = ctx.settings.api.page_max

    @r.get("/api/impact", tags=["impact"])
    def get_impact(
        rules: str = Query("in-force", description="in-force, candidate, or a version"),
        compare: str | None = Query(None, description="a second version to compare with"),
        start: str | None = Query(None, description="due from (YYYY-MM-DD; default as_of's day)"),
        end: str | None = Query(None, description="due until, inclusive (default a year on)"),
        region: str | None = None,
        as_of: str | None = Query(None, description="the pass's time (default latest telemetry)"),
    ) -> dict[str, Any]:
        """What a rules version does to the meters and lots falling due in a date range:
        decisions, meter-years gained, replacement cost and e-waste avoided, residual risk
        (expected meters beyond the limit left in service); with `compare`, both and the
        difference (compare − rules). Each version is a dry run on the same telemetry."""
        return reports.report(reports.request(rules, compare, start, end, region, as_of))

    @r.get("/api/impact/versions", tags=["impact"])
    def versions(
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """The rules versions a report can be made for: in force, candidate, promoted before."""
        desk = desk_of(ctx)
        current, candidate = desk.in_force().version, desk.candidate()
        items = [
            {
                "version": b.version,
                "in_force": b.version == current,
                "candidate": candidate is not None and b.version == candidate.version,
            }
            for b in desk.versions()
        ]
        start = int(decode_cursor(cursor)) if cursor else 0
        page = items[start : start + limit]
        more = start + limit < len(items)
        return {"items": page, "next": encode_cursor(str(start + limit)) if more else None}

    return r
