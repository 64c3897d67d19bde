"""Evaluation: run a pass, districts, lots and their laboratory sample results."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from monitor.api.context import (
    ApiContext,
    decode_cursor,
    encode_cursor,
    refuse_future_as_of,
    time_param,
)
from monitor.api.regions import RegionCache, known_region
from monitor.api.scope import caller, require, scoped_page
from monitor.core.ports import SampleRow
from monitor.evaluation.report import worth_showing
from monitor.evaluation.runner import stamped


def district_summary(body: dict[str, Any]) -> dict[str, Any]:
    """One line of the district list from a district's result body."""
    gates = body.get("gates") or {}
    meters = [m for m in body.get("meters", []) if m.get("role") == "customer"]
    return {
        "district": body["district"],
        "as_of": body.get("as_of"),
        "master": body.get("master"),
        "gates_passed": bool(gates.get("passed")),
        "failures": [f["rule"] for f in gates.get("failures", [])],
        "note": body.get("note") or None,
        "line_loss_pct": gates.get("line_loss_pct"),
        "completeness": gates.get("completeness"),
        "customers": len(meters),
        "evaluable": sum(1 for m in meters if m.get("evaluable")),
        "stopped_meters": sorted(body.get("stopped_intervals_left_out") or {}),
    }


class SampleResultIn(BaseModel):
    """One laboratory result: the drawn meter, its verification error, pass or fail."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    meter: str = Field(min_length=1)
    error_pct: float | None = None
    passed: bool


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()
    regions = RegionCache(ctx.state)

    page_max = ctx.settings.api.page_max

    @r.post("/api/evaluate", tags=["evaluation"])
    def evaluate(
        request: Request,
        as_of: str | None = None,
        force: bool = Query(False, description="evaluate an as_of after the receive clock"),
        decisions: Literal["none", "findings", "all"] = Query(
            "none",
            description="also return the pass's decisions: lots and the meters with a "
            "finding, or every meter (what `monitor evaluate` prints)",
        ),
    ) -> dict[str, Any]:
        """Evaluate everything as of `as_of` (default: the latest telemetry time).

        An `as_of` after the present is refused (400) unless `force=true`: a pass
        there finds every meter silent and clears every alert.
        """
        as_of_ms = time_param("as_of", as_of)
        if as_of_ms is not None and not force:
            refuse_future_as_of(as_of_ms, int(ctx.clock() * 1000))
        if as_of_ms is None:
            as_of_ms = ctx.evaluator.default_as_of()
        if as_of_ms is None:
            raise HTTPException(409, "no telemetry yet and no as_of given: nothing to evaluate")
        result = ctx.evaluator.run(as_of_ms, ctx.rules())
        summary = result.summary()
        ctx.record(request, "evaluation.run", "fleet", {"as_of": as_of, "force": force, **summary})
        if decisions != "none":
            meters = result.meters.values()
            summary["decisions"] = {
                "meters": [stamped(d) for d in meters if decisions == "all" or worth_showing(d)],
                "lots": [stamped(d) for d in result.lots.values()],
            }
        return summary

    @r.get("/api/districts", tags=["evaluation"])
    def districts(
        request: Request,
        gates: Literal["passed", "failed"] | None = None,
        region: str | None = None,
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Evaluated transformer areas by name: gates, line loss, how many meters are evaluable."""
        passed = None if gates is None else gates == "passed"
        index = regions()
        wanted = known_region(index, region)
        who = caller(request)

        def keep(body: dict[str, Any]) -> bool:
            name = body["district"]
            in_region = wanted is None or index.of("district", name) == wanted
            return in_region and ctx.scopes.district(who, name)

        rows, more = scoped_page(
            lambda after, n: ctx.state.list_districts(after, n, passed),
            keep,
            lambda body: str(body["district"]),
            decode_cursor(cursor) if cursor else None,
            limit,
        )
        items = [district_summary(b) for b in rows]
        return {"items": items, "next": encode_cursor(items[-1]["district"]) if more else None}

    @r.get("/api/districts/{district}", tags=["evaluation"])
    def district(request: Request, district: str) -> dict[str, Any]:
        """Energy-balance result of a transformer area: per-meter errors, line loss, fit."""
        body = ctx.state.district(district)
        if body is None or not ctx.scopes.district(caller(request), district):
            raise HTTPException(
                404,
                f"district {district!r} has not been evaluated "
                "(unknown, or no evaluation yet: POST /api/evaluate)",
            )
        return body

    @r.get("/api/lots/{lot}", tags=["evaluation"])
    def lot(request: Request, lot: str) -> dict[str, Any]:
        """Lot decision with its indicators, sampling plan, drawn meters and sample results."""
        body = ctx.state.decision("lot", lot)
        if body is None or not ctx.scopes.lot(caller(request), lot):
            raise HTTPException(
                404,
                f"lot {lot!r} has no decision (unknown lot, or no evaluation "
                "yet: POST /api/evaluate)",
            )
        return body

    @r.post("/api/lots/{lot}/sample-results", tags=["evaluation"])
    def sample_results(request: Request, lot: str, results: list[SampleResultIn]) -> dict[str, Any]:
        """Laboratory results for drawn meters; the lot is re-judged against its plan's Ac/Re."""
        body = ctx.state.decision("lot", lot)
        require(
            body is not None and ctx.scopes.lot(caller(request), lot),
            f"lot {lot!r} has no decision yet",
        )
        assert body is not None
        drawn = set(body.get("drawn") or [])
        if not drawn:
            raise HTTPException(
                409,
                f"lot {lot!r} has no sample drawn (decision "
                f"{body['decision']!r}): nothing to record results for",
            )
        _check_results(results, drawn)
        ctx.state.save_sample_results(
            lot, [SampleRow(r.meter, r.error_pct, r.passed) for r in results]
        )
        decided = ctx.evaluator.rejudge_lot(lot, ctx.rules())
        assert decided is not None
        after = stamped(decided)
        ctx.record(
            request,
            "samples.record",
            f"lot:{lot}",
            {
                "results": [r.model_dump() for r in results],
                "before": {"decision": body["decision"], "state": body["state"]},
                "after": {"decision": after["decision"], "state": after["state"]},
            },
        )
        return after

    return r


def _check_results(results: list[SampleResultIn], drawn: set[str]) -> None:
    if not results:
        raise HTTPException(400, "no results in the body")
    names = [r.meter for r in results]
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise HTTPException(422, f"meter(s) listed twice: {dupes}")
    strangers = sorted(set(names) - drawn)
    if strangers:
        raise HTTPException(422, f"meter(s) {strangers} were not drawn for this lot's sample")
