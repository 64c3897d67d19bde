"""The shadow page: where the candidate rules decide differently, reasons side by side."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from monitor.api.context import ApiContext
from monitor.api.rules import desk_of

PAGE = 200  # differences shown; the API pages through all of them


def mount(app: FastAPI, ctx: ApiContext, render: Callable[..., HTMLResponse]) -> None:
    """Add `/rules/shadow` to the pages."""

    @app.get("/rules/shadow", response_class=HTMLResponse, include_in_schema=False)
    def shadow_page(request: Request, change: str = "", scope: str = "") -> HTMLResponse:
        desk = desk_of(ctx)
        candidate = desk.candidate()
        report = desk.report()
        if report is not None and (
            candidate is None or report.candidate_version != candidate.version
        ):
            report = None  # a comparison with another candidate than the one there now
        rows = [
            d
            for d in (report.differences if report else [])
            if (not change or d["change"] == change) and (not scope or d["scope"] == scope)
        ]
        return render(
            request,
            "shadow.html",
            in_force=desk.in_force().version,
            candidate=candidate.version if candidate else None,
            error=desk.last_error,
            report=report,
            rows=rows[:PAGE],
            total=len(rows),
            change=change,
            scope=scope,
        )
