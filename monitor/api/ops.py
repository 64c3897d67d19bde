"""Operations: `/healthz` and `/metrics`."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.api.context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()

    @r.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """Liveness and readiness: broker connected, store writable."""
        store = ctx.store.health()
        broker = ctx.broker_connected()
        ok = broker and store.writable
        body = {
            "status": "ok" if ok else "degraded",
            "broker_connected": broker,
            "store": asdict(store),
        }
        return JSONResponse(body, 200 if ok else 503)

    @r.get("/metrics", tags=["operations"])
    def metrics() -> Response:
        """Prometheus metrics."""
        ctx.metrics.unregistered.set(ctx.state.count_unregistered())
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return r
