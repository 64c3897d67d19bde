"""The cross-region page: every region side by side, for authorities' joint supervision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from monitor.api.context import ApiContext
from monitor.api.regions import RegionCache, region_summary


def mount(
    app: FastAPI,
    ctx: ApiContext,
    render: Callable[..., HTMLResponse],
    regions: RegionCache,
) -> None:
    """Add `/regions` to the pages."""

    @app.get("/regions", response_class=HTMLResponse, include_in_schema=False)
    def regions_page(request: Request) -> HTMLResponse:
        index = regions()
        items: list[dict[str, Any]] = [region_summary(ctx, index, r) for r in index.regions()]
        return render(request, "regions.html", items=items)
