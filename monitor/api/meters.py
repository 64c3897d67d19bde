"""Meters: the list, one meter (registry, latest telemetry, decision), its history."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request

from monitor.api.context import ApiContext, decode_cursor, encode_cursor, time_param
from monitor.api.regions import RegionCache, known_region
from monitor.api.scope import caller, scoped_page
from monitor.core.clock import format_ts
from monitor.core.ports import MeterFilter, MeterSummary
from monitor.core.schema import (
    MEASUREMENTS,
    Measurement,
    field_owner,
)
from monitor.platform.access import Principal


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()
    regions = RegionCache(ctx.state)

    page_max = ctx.settings.api.page_max

    @r.get("/api/meters", tags=["meters"])
    def list_meters(
        request: Request,
        kind: Literal["elec", "taxi"] | None = None,
        state: Literal["normal", "watch", "suspect", "faulty", "unknown"] | None = None,
        decision: Literal["keep", "extend", "resample", "replace"] | None = None,
        district: str | None = None,
        lot: str | None = None,
        registered: bool | None = None,
        region: str | None = None,
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Meters (registry and unregistered senders) with their state and decision.

        `region`: meters of that region (an unregistered one: of the district it was
        heard in).
        """
        region = known_region(regions(), region)
        flt = MeterFilter(kind, district, lot, state, decision, registered, region)
        after = decode_cursor(cursor) if cursor else None
        who = caller(request)

        def fetch(after: str | None, n: int) -> list[MeterSummary]:
            return ctx.state.list_meters(flt, after, n)

        def mine(row: MeterSummary) -> bool:
            return ctx.scopes.listed_meter(who, row.meter_id, row.district, row.lot)

        if who.everywhere:
            rows = fetch(after, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
        else:
            rows, more = scoped_page(fetch, mine, lambda row: row.meter_id, after, limit)
        items = []
        for row in rows:
            item = asdict(row)
            item["last_ts"] = format_ts(row.last_ts) if row.last_ts else None
            items.append(item)
        return {"items": items, "next": encode_cursor(rows[-1].meter_id) if more else None}

    @r.get("/api/meters/{meter}", tags=["meters"])
    def get_meter(request: Request, meter: str) -> dict[str, Any]:
        """One meter: registry row, latest telemetry, decision."""
        kind, registry, seen = identify_meter(ctx, meter, caller(request))
        latest = {}
        for m in MEASUREMENTS.values():
            if m.kind == kind:
                point = ctx.store.latest(m, meter)
                if point is not None:
                    latest[m.channel] = {"ts": format_ts(point.ts_ms), **point.values}
        return {
            "meter_id": meter,
            "kind": kind,
            "registered": registry is not None,
            "registry": registry.as_dict() if registry else None,
            "seen": _seen_json(seen),
            "latest": latest or None,
            "decision": ctx.state.decision("meter", meter),
        }

    @r.get("/api/meters/{meter}/history", tags=["meters"])
    def history(
        request: Request,
        meter: str,
        field: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int = Query(10_000, ge=1, le=100_000),
    ) -> dict[str, Any]:
        """Stored time series of one meter: `field` (comma-separated), [start, end)."""
        kind, _, _ = identify_meter(ctx, meter, caller(request))
        measurement, fields = _resolve_fields(kind, field)
        start_ms, end_ms = time_param("start", start), time_param("end", end)
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise HTTPException(400, "end must be after start")
        points = ctx.store.history(measurement, meter, fields, start_ms, end_ms, limit)
        return {
            "meter_id": meter,
            "measurement": measurement.name,
            "fields": fields,
            "points": [{"ts": format_ts(p.ts_ms), **p.values} for p in points],
        }

    return r


def _seen_json(seen: dict[str, Any] | None) -> dict[str, Any] | None:
    if seen is None:
        return None
    return {**seen, "first_ts": format_ts(seen["first_ts"]), "last_ts": format_ts(seen["last_ts"])}


def identify_meter(
    ctx: ApiContext, meter: str, who: Principal
) -> tuple[str, Any, dict[str, Any] | None]:
    """(kind, registry row or None, telemetry presence or None); 404 when neither exists
    or the meter is outside the caller's scope (the same answer: nothing leaks)."""
    registry = ctx.state.get_meter(meter)
    seen = ctx.state.seen(meter)
    if (registry is None and seen is None) or not ctx.scopes.meter(who, meter):
        raise HTTPException(
            404, f"meter {meter!r} is not in the registry and has sent no telemetry"
        )
    kind = registry.kind if registry is not None else str(seen["kind"]) if seen else "elec"
    return kind, registry, seen


def _resolve_fields(kind: str, field: str | None) -> tuple[Measurement, list[str]]:
    names = [
        f.strip() for f in (field or ("energy_kwh" if kind == "elec" else "meter_km")).split(",")
    ]
    owners = {n: field_owner(kind, n) for n in names if n}
    unknown = [n for n, m in owners.items() if m is None]
    if unknown or not owners:
        valid = sorted({f for m in MEASUREMENTS.values() if m.kind == kind for f in m.fields})
        raise HTTPException(400, f"unknown field(s) {unknown} for a {kind} meter; valid: {valid}")
    measurements = {m.name: m for m in owners.values() if m is not None}
    if len(measurements) > 1:
        raise HTTPException(400, f"fields {names} span {sorted(measurements)}; ask one at a time")
    return next(iter(measurements.values())), names
