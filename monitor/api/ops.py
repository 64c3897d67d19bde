"""Operations: `/healthz` and `/metrics`."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.api.context import ApiContext
from monitor.core.ports import StateUnavailable


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()

    @r.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """Liveness and readiness: broker connected, store writable, state reachable."""
        store = ctx.store.health()
        state = ctx.state.health()
        broker = ctx.broker_connected()
        ctx.metrics.state_available.set(1 if state.available else 0)
        ok = broker and store.writable and state.available
        body = {
            "status": "ok" if ok else "degraded",
            "broker_connected": broker,
            "store": asdict(store),
            "state": asdict(state),
        }
        return JSONResponse(body, 200 if ok else 503)

    @r.get("/metrics", tags=["operations"])
    def metrics() -> Response:
        """Prometheus metrics."""
        try:
            ctx.metrics.unregistered.set(ctx.state.count_unregistered())
            ctx.metrics.state_available.set(1)
        except StateUnavailable:  # the metrics are served all the same
            ctx.metrics.state_available.set(0)
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return r
