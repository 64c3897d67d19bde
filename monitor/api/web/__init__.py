"""Web pages for utilities and supervision authorities, rendered from the API's data.

Plain server-rendered HTML (Jinja2) with SVG charts drawn on the server and one
small script for the two forms; everything is served from the package, nothing
from a CDN. Lists are paginated like the API so the pages work at fleet scale.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import asdict
from datetime import date, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.api.context import ApiContext, decode_cursor, decode_seq_cursor, encode_cursor
from monitor.api.evaluation import district_summary
from monitor.api.guard import (
    ACT_ALERTS,
    POST_SAMPLES,
    READ_ALERTS,
    READ_AUDIT,
    READ_TAXI,
    csrf_token,
    may,
)
from monitor.api.meters import identify_meter
from monitor.api.regions import RegionCache
from monitor.api.scope import caller, scoped_page
from monitor.api.taxi import rollout_progress_of
from monitor.api.web import charts, login
from monitor.api.web import impact as impact_pages
from monitor.api.web import regions as region_pages
from monitor.api.web import rules as rules_pages
from monitor.api.web.present import Present
from monitor.core.audit import record_json
from monitor.core.clock import DAY_MS, HOUR_MS, format_ts, ms_to_datetime, parse_ts
from monitor.core.ports import MeterFilter, MeterPoint
from monitor.core.rulebook import DistanceRule, ElecRules
from monitor.core.schema import ELEC_EVENT, ELEC_READING, TAXI_EVENT, TAXI_TRIP, Measurement
from monitor.platform.access import Principal
from monitor.taxi.fares import fare_check
from monitor.taxi.trips import Trip, trips_from_points

HERE = Path(__file__).parent


def mount_web(app: FastAPI, ctx: ApiContext) -> None:
    """Add the pages and their static files to the API application."""
    pages = Jinja2Templates(directory=HERE / "templates", context_processors=[_session])
    Present(ctx.settings.scheduling.zone).install(pages.env)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(request: Request, name: str, **data: Any) -> HTMLResponse:
        return pages.TemplateResponse(request, name, data)

    regions = RegionCache(ctx.state)
    region_pages.mount(app, ctx, render, regions)
    rules_pages.mount(app, ctx, render)
    impact_pages.mount(app, ctx, render, _csv_response)
    login.add_routes(app, ctx, pages)

    @app.exception_handler(StarletteHTTPException)
    async def errors(request: Request, exc: StarletteHTTPException) -> Response:
        # A page asked for without a session goes to the login; the API answers 401.
        if exc.status_code == 401 and not request.url.path.startswith("/api/"):
            return login.redirect_to_login(request)
        # A person's browser gets a page; the API and its clients keep the JSON error.
        if not wants_page(request):
            return await http_exception_handler(request, exc)
        return pages.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail, "hint": _hint(request.url.path)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(request: Request) -> HTMLResponse:
        return render(request, "overview.html", **_overview(ctx, caller(request)))

    @app.get("/meters", response_class=HTMLResponse, include_in_schema=False)
    def meters(
        request: Request,
        kind: str = "",
        state: str = "",
        decision: str = "",
        district: str = "",
        lot: str = "",
        region: str = "",
        cursor: str = "",
    ) -> HTMLResponse:
        f = MeterFilter(
            kind or None,
            district or None,
            lot or None,
            state or None,
            decision or None,
            region=region or None,
        )
        who = caller(request)
        rows, more = scoped_page(
            lambda after, n: ctx.state.list_meters(f, after, n),
            lambda row: ctx.scopes.listed_meter(who, row.meter_id, row.district, row.lot),
            lambda row: row.meter_id,
            decode_cursor(cursor) if cursor else None,
            100,
        )
        items = [
            {**asdict(r), "last_ts": format_ts(r.last_ts) if r.last_ts else None} for r in rows
        ]
        nxt = _next_page(request, rows[-1].meter_id) if more else None
        return render(
            request, "meters.html", items=items, next=nxt, f=f, regions=regions().regions()
        )

    @app.get("/meters/{meter}", response_class=HTMLResponse, include_in_schema=False)
    def meter(request: Request, meter: str) -> HTMLResponse:
        return render(request, "meter.html", **_meter(ctx, meter, caller(request)))

    @app.get("/districts", response_class=HTMLResponse, include_in_schema=False)
    def districts(
        request: Request, gates: str = "", region: str = "", cursor: str = ""
    ) -> HTMLResponse:
        passed = {"passed": True, "failed": False}.get(gates)
        index = regions()
        who = caller(request)
        rows, more = scoped_page(
            lambda after, n: ctx.state.list_districts(after, n, passed),
            lambda body: (
                (not region or index.of("district", body["district"]) == region)
                and ctx.scopes.district(who, body["district"])
            ),
            lambda body: str(body["district"]),
            decode_cursor(cursor) if cursor else None,
            100,
        )
        items = [district_summary(b) for b in rows]
        nxt = _next_page(request, items[-1]["district"]) if more else None
        return render(
            request,
            "districts.html",
            items=items,
            next=nxt,
            gates=gates,
            region=region,
            regions=index.regions(),
        )

    @app.get("/districts/{district}", response_class=HTMLResponse, include_in_schema=False)
    def district(request: Request, district: str, sort: str = "meter") -> HTMLResponse:
        body = ctx.state.district(district)
        if body is None or not ctx.scopes.district(caller(request), district):
            raise HTTPException(404, f"District {district} has not been evaluated yet.")
        return render(request, "district.html", **_district(ctx, body, sort))

    @app.get("/lots/{lot}", response_class=HTMLResponse, include_in_schema=False)
    def lot(request: Request, lot: str) -> HTMLResponse:
        return render(request, "lot.html", d=_lot(ctx, lot, caller(request)))

    @app.get("/lots/{lot}/sample.csv", include_in_schema=False)
    def lot_csv(request: Request, lot: str) -> Response:
        d = _lot(ctx, lot, caller(request))
        rows = []
        for meter_id in d.get("drawn") or []:
            row = ctx.state.get_meter(meter_id)
            rows.append(
                [
                    meter_id,
                    lot,
                    row.district if row else "",
                    row.manufacturer if row else "",
                    row.model if row else "",
                    row.plate if row else "",
                ]
            )
        header = ["meter_id", "lot", "district", "manufacturer", "model", "plate"]
        return _csv_response(f"{lot}-sample.csv", header, rows)

    @app.get("/meters/{meter}/fares.csv", include_in_schema=False)
    def fares_csv(request: Request, meter: str) -> Response:
        kind, _, seen = identify_meter(ctx, meter, caller(request))
        if kind != "taxi":
            raise HTTPException(404, f"{meter!r} is not a taxi meter; only taxi trips have fares")
        end = seen["last_ts"] if seen else 0
        days = ctx.rules().rules.taxi.distance.window_days
        rows = _fare_rows(ctx, _trips(ctx, meter, end - int(days * DAY_MS), end))
        cols = ["ended", "trip", "km", "wait_s", "tariff", "in_force", "reported", "expected"]
        header = [
            *cols,
            "allowed_low",
            "allowed_high",
            "diff",
            "finding",
            "version_mismatch",
            "note",
        ]
        lines = [
            [
                *(r[c] for c in cols),
                *(r["allowed"] or ("", "")),
                *(r["diff"], r["what"], r["version_mismatch"], r["note"]),
            ]
            for r in rows
        ]
        return _csv_response(f"{meter}-fares.csv", header, lines)

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts(
        request: Request,
        status: str = "",
        severity: str = "",
        kind: str = "",
        district: str = "",
        region: str = "",
        cursor: str = "",
    ) -> HTMLResponse:
        alerts = ctx.alerts
        if alerts is None:
            raise HTTPException(503, "alerts are not kept by this instance")
        index = regions()
        who = caller(request)
        rows, more = scoped_page(
            lambda after, n: alerts.list(
                status or None,
                severity or None,
                None,
                int(after or 0),
                n,
                kind=kind or None,
                district=district or None,
            ),
            lambda alert: (
                (
                    not region
                    or index.in_region(region, alert["meter"], alert["lot"], alert["district"])
                )
                and ctx.scopes.alert(who, alert)
            ),
            lambda alert: str(alert["id"]),
            str(decode_seq_cursor(cursor)),
            100,
        )
        nxt = _next_page(request, str(rows[-1]["id"])) if more else None
        f = {"status": status, "severity": severity, "kind": kind, "district": district}
        f |= {"region": region}
        return render(request, "alerts.html", items=rows, next=nxt, f=f, regions=index.regions())

    @app.get("/tariffs", response_class=HTMLResponse, include_in_schema=False)
    def tariffs(request: Request) -> HTMLResponse:
        who = caller(request)
        rollouts = []
        for version in ctx.state.tariff_versions():
            try:
                rollouts.append(rollout_progress_of(ctx, version, None, who))
            except HTTPException:  # none of its meters in the caller's scope
                continue
        return render(request, "tariffs.html", tariffs=_tariffs(ctx), rollouts=rollouts)

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit(request: Request, cursor: str = "") -> HTMLResponse:
        if ctx.audit is None:
            raise HTTPException(503, "no audit log is kept by this instance")
        rows = ctx.audit.rows(decode_seq_cursor(cursor), 101)
        nxt = _next_page(request, str(rows[99].seq)) if len(rows) > 100 else None
        return render(request, "audit.html", items=[record_json(r) for r in rows[:100]], next=nxt)


def _session(request: Request) -> dict[str, Any]:
    """What every page shows of the session: open mode, who is signed in, the CSRF token."""
    who = caller(request)
    session = request.cookies.get(login.COOKIE, "")
    return {
        "who": who,
        "open_mode": who.open_mode,
        "csrf": csrf_token(session) if session else "",
        "can": {
            "alerts": may(who, READ_ALERTS),
            "tariffs": may(who, READ_TAXI),
            "audit": may(who, READ_AUDIT),
            "act_alerts": may(who, ACT_ALERTS),
            "samples": may(who, POST_SAMPLES),
        },
    }


def _tariffs(ctx: ApiContext) -> list[dict[str, Any]]:
    """Every tariff trips are priced under, newest first, the one in force at the newest
    telemetry time marked: its rates as the fare rule applies them."""
    book = ctx.evaluator.tariffs()
    as_of = ctx.state.latest_event_ts()
    found = book.in_force(ms_to_datetime(as_of)) if as_of is not None else None
    current = found[0] if found else None
    return [
        {
            "version": version,
            "in_force": version == current,
            "effective_from": tariff.effective_from.isoformat(),
            "tariff": tariff,
        }
        for version, tariff in reversed(book.items())
    ]


def wants_page(request: Request) -> bool:
    """Whether an error should be a page: a browser asking for HTML, outside the API."""
    path = request.url.path
    api = path.startswith(("/api/", "/docs/assets/")) or path in ("/healthz", "/metrics")
    return not api and "text/html" in request.headers.get("accept", "")


def _hint(path: str) -> dict[str, str] | None:
    """Where to look instead, for a page that has nothing to show."""
    if path.startswith("/lots/"):
        lot = path.split("/")[2]
        return {"href": "/meters?" + urlencode({"lot": lot}), "text": f"the meters of lot {lot}"}
    if path.startswith("/districts/"):
        return {"href": "/districts", "text": "the evaluated districts"}
    if path.startswith("/meters/"):
        return {"href": "/meters", "text": "the meter list"}
    return None


def _csv_response(filename: str, header: list[str], rows: Iterable[Iterable[object]]) -> Response:
    """A CSV download (header first) that the browser saves as `filename`."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _next_page(request: Request, last: str) -> str:
    """Query string of the next page: the same filters, a cursor after `last`."""
    params = {k: v for k, v in request.query_params.items() if k != "cursor"}
    return urlencode({**params, "cursor": encode_cursor(last)})


def _metric(ctx: ApiContext, name: str) -> float:
    total = 0.0
    for family in ctx.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def _overview(ctx: ApiContext, who: Principal) -> dict[str, Any]:
    as_of = ctx.state.latest_event_ts()
    received = ctx.state.last_received()
    if who.everywhere:
        due, more = _due_soon(ctx, as_of)
        by_severity = ctx.alerts.open_by_severity() if ctx.alerts else {}
        fleet = {
            "kinds": ctx.state.kind_counts(),
            "counts": ctx.state.decision_counts(),
            "lots": ctx.state.decisions_where("lot", "resample"),
        }
    else:
        due, more = _due_soon(ctx, as_of, who=who)
        by_severity = _open_alerts_in_scope(ctx, who) if may(who, READ_ALERTS) else {}
        fleet = _scoped_counts(ctx, who)
    return {
        "as_of": format_ts(as_of) if as_of else None,
        **fleet,
        "open_alerts": sum(by_severity.values()),
        "alerts_by_severity": by_severity,
        "due": due,
        "due_more": more,
        "health": {
            "received": int(_metric(ctx, "monitor_messages_received_total")),
            "rejected": int(_metric(ctx, "monitor_messages_rejected_total")),
            "buffered": int(_metric(ctx, "monitor_store_buffered_points")),
            "per_minute": _metric(ctx, "monitor_messages_per_minute"),
            "last_received": format_ts(int(received * 1000)) if received else None,
        },
    }


def _scoped_counts(ctx: ApiContext, who: Principal) -> dict[str, Any]:
    """Kinds, (kind, state, decision) counts and lots to decide, of the caller's scope."""
    mine, _ = scoped_page(
        lambda after, n: ctx.state.list_meters(MeterFilter(), after, n),
        lambda row: ctx.scopes.listed_meter(who, row.meter_id, row.district, row.lot),
        lambda row: row.meter_id,
        None,
        10_000_000,
    )
    kinds: dict[str, int] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for row in mine:
        kinds[row.kind] = kinds.get(row.kind, 0) + 1
        if row.state is not None and row.decision is not None:
            key = (row.kind, row.state, row.decision)
            counts[key] = counts.get(key, 0) + 1
    lots = ctx.state.decisions_where("lot", "resample", 10_000)
    return {
        "kinds": kinds,
        "counts": [
            {"kind": k, "state": s, "decision": d, "n": n}
            for (k, s, d), n in sorted(counts.items())
        ],
        "lots": [b for b in lots if ctx.scopes.lot(who, str(b["id"]))][:100],
    }


def _open_alerts_in_scope(ctx: ApiContext, who: Principal) -> dict[str, int]:
    alerts = ctx.alerts
    if alerts is None:
        return {}
    found, _ = scoped_page(
        lambda after, n: alerts.list("open", None, None, int(after or 0), n),
        lambda alert: ctx.scopes.alert(who, alert),
        lambda alert: str(alert["id"]),
        None,
        10_000_000,
    )
    out: dict[str, int] = {}
    for alert in found:
        out[alert["severity"]] = out.get(alert["severity"], 0) + 1
    return out


def _due_soon(
    ctx: ApiContext, as_of: int | None, shown: int = 50, who: Principal | None = None
) -> tuple[list[dict[str, Any]], int]:
    if as_of is None:
        return [], 0
    today = ms_to_datetime(as_of).date()
    horizon = today + timedelta(days=365)
    if who is None:
        rows, total = ctx.state.due_by(horizon, shown)
    else:
        every, _ = ctx.state.due_by(horizon, 10_000_000)
        rows = [r for r in every if ctx.scopes.meter(who, r.meter_id)]
        total, rows = len(rows), rows[:shown]
    items = [{"meter_id": m, "kind": kind, "lot": lot, "due_on": due} for m, kind, lot, due in rows]
    return items, total - len(items)


def _meter(ctx: ApiContext, meter: str, who: Principal) -> dict[str, Any]:
    kind, registry, seen = identify_meter(ctx, meter, who)
    decision = ctx.state.decision("meter", meter)
    m = {
        "meter_id": meter,
        "kind": kind,
        "registry": registry.as_dict() if registry else None,
        "decision": decision,
    }
    rules = ctx.rules().rules
    zone = ctx.settings.scheduling.zone
    # The window the meter's rules read: what its decision rests on.
    days = rules.elec.estimation.window_days if kind == "elec" else rules.taxi.distance.window_days
    end = seen["last_ts"] if seen else 0
    start = end - int(days * DAY_MS)
    page: dict[str, Any] = {"m": m, "days": f"{days:g}", "fares": None}
    if kind == "elec":
        page |= _elec_charts(ctx, meter, start, end)
        events = ELEC_EVENT
        accuracy = registry.accuracy_class if registry else None
        page["error_chart"] = charts.estimates(
            _error_points(ctx, meter),
            "estimated error, % (95 % interval)",
            _elec_levels(rules.elec, accuracy),
            zone,
        )
    else:
        trips = _trips(ctx, meter, start, end)
        page |= _taxi_chart(trips, decision, rules.taxi.distance, zone)
        page["fares"] = _fare_checks(ctx, trips)
        page["error_chart"] = charts.estimates(
            _error_points(ctx, meter),
            "distance error δ against the fleet, % (95 % interval)",
            _taxi_levels(rules.taxi.distance),
            zone,
        )
        events = TAXI_EVENT
    page["timeline"] = _timeline(ctx, meter, events, start, end, who)
    return page


def _elec_charts(ctx: ApiContext, meter: str, start: int, end: int) -> dict[str, Any]:
    """The register and, where the meter reports it, the current over the same days: a
    register standing still while current flows is a stopped meter (the rule's proof)."""
    zone = ctx.settings.scheduling.zone
    fields = ["energy_kwh", "current_a"]
    pts = ctx.store.history(ELEC_READING, meter, fields, start, end + 1, 100_000)

    def column(name: str) -> list[tuple[int, float]]:
        return [(p.ts_ms, float(p.values[name])) for p in pts if p.values.get(name) is not None]

    current = column("current_a")
    return {
        "chart": charts.series(column("energy_kwh"), "register, kWh", zone=zone),
        "chart_title": "Register",
        "current_chart": charts.series(current, "current, A", zone=zone) if current else None,
    }


def _taxi_chart(
    trips: list[Trip], decision: dict[str, Any] | None, rule: DistanceRule, zone: tzinfo
) -> dict[str, Any]:
    """Meter / GNSS distance per trip long enough to judge, against 1, the fleet median
    and the guard band around it (δ is the meter's median against the fleet's)."""
    ratios = [
        (t.end_ms, t.meter_km / t.gps_km)
        for t in trips
        if t.gps_km and t.gps_km >= rule.min_trip_km
    ]
    levels = [charts.Level(1.0, "GNSS = meter", charts.GREY, left=True)]
    median_pct = ((decision or {}).get("evidence") or {}).get("fleet_median_pct")
    if median_pct is not None:
        fleet = 1 + median_pct / 100
        levels += [
            charts.Level(fleet, "fleet median", charts.BLUE, left=True),
            charts.Level(fleet * (1 + rule.guard_low_pct / 100), "guard band", charts.AMBER),
            charts.Level(fleet * (1 + rule.guard_high_pct / 100), "guard band", charts.AMBER),
        ]
    return {
        "chart": charts.series(
            ratios, "meter km / GNSS km per trip", dots=True, levels=levels, zone=zone
        ),
        "chart_title": f"Meter / GNSS distance ratio per trip (trips ≥ {rule.min_trip_km:g} km)",
        "current_chart": None,
    }


def _error_points(
    ctx: ApiContext, meter: str
) -> list[tuple[int, float | None, float | None, float | None, str]]:
    return [
        (parse_ts(p.as_of), p.error_pct, p.low_pct, p.high_pct, p.state)
        for p in ctx.state.error_history(meter)
    ]


def _elec_levels(rules: ElecRules, accuracy_class: str | None) -> list[charts.Level]:
    limit = rules.error_limit.in_service_limit_pct.get(accuracy_class or "")
    if limit is None:
        return []
    watch = rules.error_limit.watch_fraction * limit
    return [
        charts.Level(limit, f"limit +{limit:g} %", charts.RED),
        charts.Level(-limit, f"limit −{limit:g} %", charts.RED),
        charts.Level(watch, "watch", charts.AMBER),
        charts.Level(-watch, "watch", charts.AMBER),
    ]


def _taxi_levels(rule: DistanceRule) -> list[charts.Level]:
    return [
        charts.Level(rule.limit_high_pct, "JJG 517 limit", charts.RED),
        charts.Level(rule.limit_low_pct, "JJG 517 limit", charts.RED),
        charts.Level(rule.guard_high_pct, "guard band", charts.AMBER),
        charts.Level(rule.guard_low_pct, "guard band", charts.AMBER),
    ]


def _timeline(
    ctx: ApiContext, meter: str, events: Measurement, start: int, end: int, who: Principal
) -> list[dict[str, Any]]:
    """The meter's events and alerts (for roles that read alerts), newest first."""
    timeline = [
        {
            "ts": format_ts(p.ts_ms),
            "what": p.values.get("code", ""),
            "tag": False,
            "detail": p.values.get("detail", ""),
        }
        for p in ctx.store.history(events, meter, ["code", "detail"], start, end + 1, 10_000)
    ]
    if ctx.alerts is not None and may(who, READ_ALERTS):
        for a in ctx.alerts.list(None, None, None, 0, 1000, meter=meter):
            timeline.append(
                {
                    "ts": a["last_seen"],
                    "what": a["status"],
                    "tag": True,
                    "detail": f"alert #{a['id']} {a['rule']}: {a['message']}",
                }
            )
    timeline.sort(key=lambda e: e["ts"], reverse=True)
    return timeline[:200]


def _trips(ctx: ApiContext, meter: str, start: int, end: int) -> list[Trip]:
    """A taxi meter's trips that ended in [start, end], one per trip id."""
    points = ctx.store.history(TAXI_TRIP, meter, list(TAXI_TRIP.fields), start, end + 1, 100_000)
    return trips_from_points([MeterPoint(meter, p.ts_ms, p.values) for p in points])


def _fare_rows(ctx: ApiContext, trips: list[Trip]) -> list[dict[str, Any]]:
    """Every trip re-priced as the fare rule does: wrong fares first, then wrong versions."""
    rules = ctx.rules().rules.taxi
    tariffs = ctx.evaluator.tariffs()
    grace_ms = int(rules.tariff.deadline_h * HOUR_MS)
    rows: list[dict[str, Any]] = []
    for t in trips:
        c = fare_check(t, tariffs, rules.fare, grace_ms=grace_ms)
        finding = (
            "not checked"
            if not c.checked
            else "fare"
            if c.mismatch
            else "tariff version"
            if c.version_mismatch
            else "ok"
        )
        rows.append(
            {
                "ended": format_ts(c.end_ms),
                "trip": c.trip_id,
                "km": t.meter_km,
                "wait_s": t.wait_s,
                "tariff": t.tariff_version or "–",
                "in_force": c.version_in_force,
                "reported": c.reported_cny,
                "expected": c.expected_cny,
                "allowed": c.allowed_cny,
                "diff": c.diff_cny,
                "what": finding,
                "version_mismatch": c.version_mismatch,
                "note": c.note,
            }
        )
    order = {"fare": 0, "tariff version": 1, "not checked": 2, "ok": 3}
    rows.sort(key=lambda r: r["ended"], reverse=True)
    rows.sort(key=lambda r: order[r["what"]])
    return rows


def _fare_checks(ctx: ApiContext, trips: list[Trip], shown: int = 25) -> dict[str, Any]:
    """Counts of the fare checks and the first findings for the meter page."""
    rows = _fare_rows(ctx, trips)
    bad = [r for r in rows if r["what"] in ("fare", "tariff version")]
    return {
        "checked": sum(1 for r in rows if r["what"] != "not checked"),
        "unchecked": sum(1 for r in rows if r["what"] == "not checked"),
        "mismatches": sum(1 for r in rows if r["what"] == "fare"),
        "version_mismatches": sum(1 for r in rows if r["version_mismatch"]),
        "rows": bad[:shown],
        "more": max(0, len(bad) - shown),
    }


def _district(ctx: ApiContext, body: dict[str, Any], sort: str) -> dict[str, Any]:
    meters = list(body["meters"])
    keys = {
        "error": lambda m: -abs(m["error_pct"]) if m["error_pct"] is not None else math.inf,
        "state": lambda m: (m["state"] or "", m["meter"]),
    }
    meters.sort(key=keys.get(sort, lambda m: m["meter"]))
    limits = ctx.rules().rules.elec.error_limit.in_service_limit_pct
    rows = [
        (m["meter"], m["error_pct"], m["error_ci_pct"][0], m["error_ci_pct"][1])
        for m in body["meters"]
        if m["evaluable"] and m["error_pct"] is not None
    ]
    daily = body.get("line_loss_daily", [])
    per_day = 86_400 / ctx.rules().rules.elec.estimation.interval_s
    loss, covered = [], []
    for d in daily:
        day = date.fromisoformat(d["day"])
        # A block of intervals (merged across a missed reading) counts on the day it ends,
        # so a day after a gap across midnight can count a few more than it has: at most
        # the whole day is usable, and the tooltip says what was counted.
        share = min(100.0, 100 * d["intervals"] / per_day)
        counted = f"{d['intervals']} of {per_day:.0f} intervals usable"
        if d["intervals"] > per_day:
            counted = (
                f"{d['intervals']} intervals counted in a {per_day:.0f}-interval day (a block "
                "across midnight counts on the day it ends): the whole day usable"
            )
        tip = (
            f"{d['day']}: line loss {_pct(d['line_loss_pct'])}, {counted}, "
            f"{d['supplied_kwh']:.1f} kWh supplied"
        )
        loss.append((day, d["line_loss_pct"], tip))
        covered.append((day, share, tip))
    overall = body["gates"]["line_loss_pct"] if body.get("gates") else None
    return {
        "d": body,
        "meters": meters,
        "chart": charts.error_bars(rows, limits.get("2")),
        "loss_chart": charts.daily(loss, "line loss, % of supplied energy", overall),
        "covered_chart": charts.daily(covered, "usable intervals, % of the day", 100.0),
        "days": len(daily),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


def _lot(ctx: ApiContext, lot: str, who: Principal) -> dict[str, Any]:
    body = ctx.state.decision("lot", lot)
    if body is None or not ctx.scopes.lot(who, lot):
        raise HTTPException(
            404,
            f"Lot {lot} has no decision: lots of electricity meters are decided by every "
            "evaluation pass; a taxi lot or an unknown one has none.",
        )
    return body
