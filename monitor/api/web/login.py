"""Signing in to the pages with an API token: a login form, an HTTP-only cookie, sign out.

The cookie holds the same token the API takes as `Authorization: Bearer`; it is
HTTP-only (no script reads it), SameSite=Strict and Secure (except over plain HTTP on
a loopback address, where a local demo has no TLS). Every change a cookie session makes
carries the page's CSRF token (`api.guard.check_csrf`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from monitor.api.context import ApiContext
from monitor.api.guard import COOKIE, Guard, csrf_token, secure_cookie
from monitor.core.ports import AuditEntry

SESSION_S = 12 * 3600  # a working day; the token itself may expire sooner (OIDC)

__all__ = ["COOKIE", "add_routes", "redirect_to_login"]


def redirect_to_login(request: Request) -> Response:
    """303 to the login page, coming back to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", 303)


def _safe_next(value: str) -> str:
    """Only a path of this site (never `//host` or a scheme): no open redirect."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def _form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, f"send the form (application/x-www-form-urlencoded), not {kind!r}")
    try:
        fields = parse_qs((await request.body()).decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"form not readable: {exc}") from None
    return {k: v[0] for k, v in fields.items()}


def add_routes(app: FastAPI, ctx: ApiContext, pages: Jinja2Templates) -> None:
    """GET/POST /login and POST /logout."""

    def page(request: Request, status: int, **data: Any) -> HTMLResponse:
        return pages.TemplateResponse(request, "login.html", data, status_code=status)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, 200, next=_safe_next(next), error="")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        target = _safe_next(form.get("next", "/"))
        book = ctx.access()
        if book is None:  # open mode: nothing to sign in to
            return RedirectResponse(target, 303)
        guard: Guard = request.app.state.guard
        token = form.get("token", "").strip()
        try:
            who = guard.authenticate(request, book, token)
        except HTTPException as exc:
            return page(request, exc.status_code, next=target, error=str(exc.detail))
        if ctx.audit is not None:
            ctx.audit.append(AuditEntry(who.name, who.role, "auth.login", "pages", {}))
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_S,
            httponly=True,
            secure=secure_cookie(request),
            samesite="strict",
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        form = await _form(request)
        session = request.cookies.get(COOKIE, "")
        if session and form.get("csrf") != csrf_token(session):
            raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response
