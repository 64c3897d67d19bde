"""The HTTP API of docs/api.md (FastAPI; OpenAPI at /docs): one router per module.

app = create_app(ApiContext(settings, state, store, metrics, ...))

Every route passes the guard first (`api.guard`): its role rule, the caller's token,
CSRF for cookie sessions. In open mode (no access file; loopback only) it lets all in.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor import __version__
from monitor.api import (
    alerts,
    audit,
    evaluation,
    impact,
    meters,
    ops,
    regions,
    registry,
    rules,
    taxi,
)
from monitor.api.context import ApiContext, jsonable
from monitor.api.docs import add_docs
from monitor.api.guard import Guard, bearer
from monitor.platform.access import Principal


def _readable(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(ctx: ApiContext) -> FastAPI:
    """Build the FastAPI application over a context."""
    guard = Guard(ctx.access, ctx.audit, ctx.settings.api.auth_failures_per_minute)

    def check(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        return guard.check(request, creds)

    app = FastAPI(
        title="meter-state monitor",
        version=__version__,
        description="State evaluation of in-service electricity and taxi fare meters.",
        docs_url=None,  # served by add_docs from packaged files, not a CDN
        dependencies=[Depends(check)],
    )
    add_docs(app)
    app.state.guard = guard
    app.add_middleware(BodyLimit, max_bytes=ctx.settings.api.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _readable(exc), "errors": jsonable(exc.errors())}, 422)

    for part in (ops, meters, registry, evaluation, taxi, alerts, regions, rules, impact, audit):
        app.include_router(part.router(ctx))
    return app


class BodyLimit:
    """Refuse a request body over `max_bytes` (413) before any route reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send, declared.decode(errors="replace"))
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, f"more than {size}")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: str) -> None:
        detail: dict[str, Any] = {
            "detail": f"request body of {size} bytes is over the limit of {self.max_bytes} "
            "(api.max_body_bytes)"
        }
        response = JSONResponse(detail, 413)
        await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
