"""Regions: the cross-region view for authorities, and the region index the lists filter by."""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Query

from monitor.api.context import ApiContext, decode_cursor, encode_cursor
from monitor.core.ports import MeterFilter, StateStore
from monitor.core.regions import RegionIndex

T = TypeVar("T")

# Rows read per step when a list is filtered after reading (alerts, districts by region).
_READ_AHEAD = 500


class RegionCache:
    """The registry's `RegionIndex`, rebuilt only when the registry changed."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._version = -1
        self._index = RegionIndex()

    def __call__(self) -> RegionIndex:
        version = self._state.registry_version()
        if version != self._version:
            self._index = RegionIndex.from_rows(self._state.registry_rows())
            self._version = version
        return self._index


def known_region(index: RegionIndex, region: str | None) -> str | None:
    """`region` if the registry has it (None passes); else a 422 naming the regions there are."""
    if region is None or region in index.regions():
        return region
    known = ", ".join(index.regions())
    raise HTTPException(422, f"region: no region {region!r} in the registry (regions: {known})")


def region_summary(ctx: ApiContext, index: RegionIndex, region: str) -> dict[str, Any]:
    """One region's meters, districts, lots, decisions and open alerts."""
    kinds: Counter[str] = Counter()
    states: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    after: str | None = None
    while True:
        rows = ctx.state.list_meters(MeterFilter(region=region), after, _READ_AHEAD)
        for m in rows:
            kinds[m.kind] += 1
            states[m.state or "undecided"] += 1
            decisions[m.decision or "undecided"] += 1
        if len(rows) < _READ_AHEAD:
            break
        after = rows[-1].meter_id
    lots = sorted(lot for lot, r in index.lots.items() if r == region)
    lot_decisions: Counter[str] = Counter()
    for lot in lots:
        body = ctx.state.decision("lot", lot)
        lot_decisions[body["decision"] if body else "undecided"] += 1
    return {
        "region": region,
        "meters": sum(kinds.values()),
        "meters_by_kind": dict(sorted(kinds.items())),
        "meter_states": dict(sorted(states.items())),
        "meter_decisions": dict(sorted(decisions.items())),
        "districts": sum(1 for r in index.districts.values() if r == region),
        "lots": len(lots),
        "lot_decisions": dict(sorted(lot_decisions.items())),
        "open_alerts": _open_alerts(ctx, index, region),
    }


def _open_alerts(ctx: ApiContext, index: RegionIndex, region: str) -> dict[str, int] | None:
    if ctx.alerts is None:
        return None
    book = ctx.alerts
    found: Counter[str] = Counter()
    after = 0
    while True:
        rows = book.list("open", None, None, after, _READ_AHEAD)
        for a in rows:
            if index.in_region(region, a.get("meter"), a.get("lot"), a.get("district")):
                found[a["severity"]] += 1
        if len(rows) < _READ_AHEAD:
            break
        after = int(rows[-1]["id"])
    return {s: found[s] for s in ("critical", "major", "minor", "info")}


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()
    regions = RegionCache(ctx.state)
    page_max = ctx.settings.api.page_max

    @r.get("/api/regions", tags=["regions"])
    def list_regions(
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Every region side by side: meters, districts, lots, decisions and open alerts.

        A registry without regions is one region, `default`.
        """
        index = regions()
        after = decode_cursor(cursor) if cursor else ""
        names = [n for n in index.regions() if n > after]
        items = [region_summary(ctx, index, n) for n in names[:limit]]
        more = len(names) > limit
        return {"items": items, "next": encode_cursor(items[-1]["region"]) if more else None}

    @r.get("/api/regions/{region}", tags=["regions"])
    def get_region(region: str) -> dict[str, Any]:
        """One region's summary."""
        index = regions()
        if region not in index.regions():
            known = ", ".join(index.regions())
            raise HTTPException(404, f"no region {region!r} in the registry (regions: {known})")
        return region_summary(ctx, index, region)

    return r
