"""The HTTP API of docs/api.md (FastAPI; OpenAPI at /docs): one router per module.

app = create_app(ApiContext(settings, state, store, metrics, ...))
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from monitor import __version__
from monitor.api import alerts, evaluation, meters, ops, registry, taxi
from monitor.api.context import ApiContext, jsonable
from monitor.api.docs import add_docs


def _readable(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(ctx: ApiContext) -> FastAPI:
    """Build the FastAPI application over a context."""
    app = FastAPI(
        title="meter-state monitor",
        version=__version__,
        description="State evaluation of in-service electricity and taxi fare meters.",
        docs_url=None,  # served by add_docs from packaged files, not a CDN
    )
    add_docs(app)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _readable(exc), "errors": jsonable(exc.errors())}, 422)

    for part in (ops, meters, registry, evaluation, taxi, alerts):
        app.include_router(part.router(ctx))
    return app
