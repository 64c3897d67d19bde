"""The policy impact page and its CSV: one rules version, or two side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from monitor.api.context import ApiContext
from monitor.api.impact import ImpactReports
from monitor.api.rules import desk_of
from monitor.evaluation.impact import rows_of


def mount(
    app: FastAPI,
    ctx: ApiContext,
    render: Callable[..., HTMLResponse],
    csv_response: Callable[[str, list[str], Iterable[Iterable[object]]], Response],
) -> None:
    """Add `/impact` and `/impact.csv` to the pages."""
    reports = ImpactReports(ctx)

    def lines(body: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        first = rows_of(body["report"])
        if body["compare"] is None:
            return ["figure", body["report"]["rules_version"]], [[k, v] for k, v in first]
        second = dict(rows_of(body["compare"]))
        header = ["figure", body["report"]["rules_version"], body["compare"]["rules_version"]]
        rows = [[k, v, second.get(k), _minus(second.get(k), v)] for k, v in first]
        return [*header, "difference"], rows

    @app.get("/impact", response_class=HTMLResponse, include_in_schema=False)
    def impact_page(
        request: Request,
        rules: str = "in-force",
        compare: str = "",
        start: str = "",
        end: str = "",
        region: str = "",
    ) -> HTMLResponse:
        req = reports.request(
            rules, compare or None, start or None, end or None, region or None, None
        )
        body = reports.report(req)
        header, rows = lines(body)
        desk = desk_of(ctx)
        return render(
            request,
            "impact.html",
            body=body,
            header=header,
            rows=rows,
            versions=[b.version for b in desk.versions()],
            f={"rules": rules, "compare": compare, "start": req.query.start.isoformat(),
               "end": req.query.end.isoformat(), "region": region},
            regions=sorted({r for r in reports.regions().meters.values()}),
            query=request.url.query,
        )  # fmt: skip

    @app.get("/impact.csv", include_in_schema=False)
    def impact_csv(
        rules: str = "in-force", compare: str = "", start: str = "", end: str = "", region: str = ""
    ) -> Response:
        req = reports.request(
            rules, compare or None, start or None, end or None, region or None, None
        )
        header, rows = lines(reports.report(req))
        name = f"impact-{req.query.start}-{req.query.end}{'-' + region if region else ''}.csv"
        return csv_response(name, header, rows)


def _minus(b: Any, a: Any) -> Any:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return round(b - a, 3)
    return None
