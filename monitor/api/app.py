"""The HTTP API of docs/api.md (FastAPI; OpenAPI at /docs)."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor import __version__
from monitor.alerts.book import AlertBook, Change, TransitionError
from monitor.core.ports import MeterFilter, SampleRow, StateStore, TelemetryStore
from monitor.core.registry import ParsedRows, parse_csv, parse_rows
from monitor.core.rulebook import RuleBook
from monitor.core.schema import (
    ID_PATTERN,
    MEASUREMENTS,
    TAXI_EVENT,
    TAXI_STATUS,
    Measurement,
    field_owner,
)
from monitor.evaluation.report import worth_showing
from monitor.evaluation.runner import Evaluator, future_as_of
from monitor.ingest.telemetry import format_ts, parse_ts
from monitor.platform.config import Settings
from monitor.platform.metrics import Metrics
from monitor.taxi.rollout import Rollout, applied_at, progress
from monitor.taxi.rollout import summary as rollout_summary
from monitor.taxi.tariff import Tariff


@dataclass
class ApiContext:
    """What the API reads and writes; built by the service, or by a test."""

    settings: Settings
    state: StateStore
    store: TelemetryStore
    metrics: Metrics
    broker_connected: Callable[[], bool]
    evaluator: Evaluator
    rules: Callable[[], RuleBook]
    publish: Callable[[str, bytes, bool], None] | None = None
    alerts: AlertBook | None = None
    notify: Callable[[Sequence[Change]], None] | None = None
    # The receive clock (epoch s): requests are validated against it, never decided by it.
    clock: Callable[[], float] = time.time


def district_summary(body: dict[str, Any]) -> dict[str, Any]:
    """One line of the district list from a district's result body."""
    gates = body.get("gates") or {}
    meters = [m for m in body.get("meters", []) if m.get("role") == "customer"]
    return {
        "district": body["district"],
        "as_of": body.get("as_of"),
        "master": body.get("master"),
        "gates_passed": bool(gates.get("passed")),
        "failures": [f["rule"] for f in gates.get("failures", [])],
        "note": body.get("note") or None,
        "line_loss_pct": gates.get("line_loss_pct"),
        "completeness": gates.get("completeness"),
        "customers": len(meters),
        "evaluable": sum(1 for m in meters if m.get("evaluable")),
        "stopped_meters": sorted(body.get("stopped_intervals_left_out") or {}),
    }


def encode_cursor(last_id: str) -> str:
    """Opaque keyset cursor."""
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Inverse of encode_cursor; a 400 when it was not ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith("after:"):
        raise HTTPException(400, f"cursor {cursor!r} is not one this API returned")
    return text.removeprefix("after:")


def _time_param(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_ts(int(value) if value.lstrip("-").isdigit() else value)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None


def refuse_future_as_of(as_of_ms: int, now_ms: int) -> None:
    """A 400 for an `as_of` after the receive clock."""
    why = future_as_of(as_of_ms, now_ms)
    if why is not None:
        raise HTTPException(400, why)


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
    )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _readable(exc), "errors": jsonable(exc.errors())}, 422)

    _add_ops(app, ctx)
    _add_meters(app, ctx)
    _add_registry(app, ctx)
    _add_evaluation(app, ctx)
    _add_taxi(app, ctx)
    _add_alerts(app, ctx)
    return app


def jsonable(value: Any) -> Any:
    """Drop what JSON cannot carry from pydantic error lists."""
    return json.loads(json.dumps(value, default=str))


def _add_ops(app: FastAPI, ctx: ApiContext) -> None:
    @app.get("/healthz", tags=["operations"])
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

    @app.get("/metrics", tags=["operations"])
    def metrics() -> Response:
        """Prometheus metrics."""
        ctx.metrics.unregistered.set(ctx.state.count_unregistered())
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_meters(app: FastAPI, ctx: ApiContext) -> None:
    page_max = ctx.settings.api.page_max

    @app.get("/api/meters", tags=["meters"])
    def list_meters(
        kind: Literal["elec", "taxi"] | None = None,
        state: Literal["normal", "watch", "suspect", "faulty", "unknown"] | None = None,
        decision: Literal["keep", "extend", "resample", "replace"] | None = None,
        district: str | None = None,
        lot: str | None = None,
        registered: bool | None = None,
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Meters (registry and unregistered senders) with their state and decision."""
        flt = MeterFilter(kind, district, lot, state, decision, registered)
        after = decode_cursor(cursor) if cursor else None
        rows = ctx.state.list_meters(flt, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for row in rows:
            item = asdict(row)
            item["last_ts"] = format_ts(row.last_ts) if row.last_ts else None
            items.append(item)
        return {"items": items, "next": encode_cursor(rows[-1].meter_id) if more else None}

    @app.get("/api/meters/{meter}", tags=["meters"])
    def get_meter(meter: str) -> dict[str, Any]:
        """One meter: registry row, latest telemetry, decision."""
        kind, registry, seen = identify_meter(ctx, meter)
        latest = {}
        for m in MEASUREMENTS.values():
            if m.kind == kind:
                point = ctx.store.latest(m, meter)
                if point is not None:
                    latest[m.channel] = {"ts": format_ts(point.ts_ms), **point.values}
        return {
            "meter_id": meter,
            "kind": kind,
            "registered": registry is not None,
            "registry": registry.as_dict() if registry else None,
            "seen": _seen_json(seen),
            "latest": latest or None,
            "decision": ctx.state.decision("meter", meter),
        }

    @app.get("/api/meters/{meter}/history", tags=["meters"])
    def history(
        meter: str,
        field: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int = Query(10_000, ge=1, le=100_000),
    ) -> dict[str, Any]:
        """Stored time series of one meter: `field` (comma-separated), [start, end)."""
        kind, _, _ = identify_meter(ctx, meter)
        measurement, fields = _resolve_fields(kind, field)
        start_ms, end_ms = _time_param("start", start), _time_param("end", end)
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise HTTPException(400, "end must be after start")
        points = ctx.store.history(measurement, meter, fields, start_ms, end_ms, limit)
        return {
            "meter_id": meter,
            "measurement": measurement.name,
            "fields": fields,
            "points": [{"ts": format_ts(p.ts_ms), **p.values} for p in points],
        }


def _seen_json(seen: dict[str, Any] | None) -> dict[str, Any] | None:
    if seen is None:
        return None
    return {**seen, "first_ts": format_ts(seen["first_ts"]), "last_ts": format_ts(seen["last_ts"])}


def identify_meter(ctx: ApiContext, meter: str) -> tuple[str, Any, dict[str, Any] | None]:
    """(kind, registry row or None, telemetry presence or None); 404 when neither exists."""
    registry = ctx.state.get_meter(meter)
    seen = ctx.state.seen(meter)
    if registry is None and seen is None:
        raise HTTPException(
            404, f"meter {meter!r} is not in the registry and has sent no telemetry"
        )
    kind = registry.kind if registry is not None else str(seen["kind"]) if seen else "elec"
    return kind, registry, seen


def _resolve_fields(kind: str, field: str | None) -> tuple[Measurement, list[str]]:
    names = [
        f.strip() for f in (field or ("energy_kwh" if kind == "elec" else "meter_km")).split(",")
    ]
    owners = {n: field_owner(kind, n) for n in names if n}
    unknown = [n for n, m in owners.items() if m is None]
    if unknown or not owners:
        valid = sorted({f for m in MEASUREMENTS.values() if m.kind == kind for f in m.fields})
        raise HTTPException(400, f"unknown field(s) {unknown} for a {kind} meter; valid: {valid}")
    measurements = {m.name: m for m in owners.values() if m is not None}
    if len(measurements) > 1:
        raise HTTPException(400, f"fields {names} span {sorted(measurements)}; ask one at a time")
    return next(iter(measurements.values())), names


def _add_registry(app: FastAPI, ctx: ApiContext) -> None:
    @app.post(
        "/api/registry",
        tags=["registry"],
        openapi_extra={
            "requestBody": {
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                },
                "required": True,
            }
        },
    )
    async def post_registry(request: Request) -> JSONResponse:
        """Add or update meters from CSV (the columns of docs/registry.md) or a JSON list of rows."""
        body = await request.body()
        parsed = _parse_registry_body(request.headers.get("content-type", ""), body)
        if parsed.errors:
            errors = [asdict(e) for e in parsed.errors]
            summary = "; ".join(str(e) for e in parsed.errors[:5])
            return JSONResponse(
                {
                    "detail": f"{len(errors)} row(s) refused, nothing stored: {summary}",
                    "errors": errors,
                },
                422,
            )
        if not parsed.rows:
            raise HTTPException(400, "no rows in the body")
        added, updated = ctx.state.upsert_meters(parsed.rows)
        return JSONResponse({"added": added, "updated": updated})


def _parse_registry_body(content_type: str, body: bytes) -> ParsedRows:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not UTF-8") from None
    if "json" in content_type:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"invalid JSON: {exc}") from None
        items = data.get("items") if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise HTTPException(400, "JSON body must be a list of row objects (or {items: [...]})")
        return parse_rows(items)
    if "csv" in content_type or "text/plain" in content_type or not content_type:
        return parse_csv(text)
    raise HTTPException(415, f"send text/csv or application/json, not {content_type!r}")


class SampleResultIn(BaseModel):
    """One laboratory result: the drawn meter, its verification error, pass or fail."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    meter: str = Field(min_length=1)
    error_pct: float | None = None
    passed: bool


def _add_evaluation(app: FastAPI, ctx: ApiContext) -> None:
    page_max = ctx.settings.api.page_max

    @app.post("/api/evaluate", tags=["evaluation"])
    def evaluate(
        as_of: str | None = None,
        force: bool = Query(False, description="evaluate an as_of after the receive clock"),
        decisions: Literal["none", "findings", "all"] = Query(
            "none",
            description="also return the pass's decisions: lots and the meters with a "
            "finding, or every meter (what `monitor evaluate` prints)",
        ),
    ) -> dict[str, Any]:
        """Evaluate everything as of `as_of` (default: the latest telemetry time).

        An `as_of` after the present is refused (400) unless `force=true`: a pass
        there finds every meter silent and clears every alert.
        """
        as_of_ms = _time_param("as_of", as_of)
        if as_of_ms is not None and not force:
            refuse_future_as_of(as_of_ms, int(ctx.clock() * 1000))
        if as_of_ms is None:
            as_of_ms = ctx.evaluator.default_as_of()
        if as_of_ms is None:
            raise HTTPException(409, "no telemetry yet and no as_of given: nothing to evaluate")
        result = ctx.evaluator.run(as_of_ms, ctx.rules())
        summary = result.summary()
        if decisions != "none":
            meters = result.meters.values()
            summary["decisions"] = {
                "meters": [d.as_dict() for d in meters if decisions == "all" or worth_showing(d)],
                "lots": [d.as_dict() for d in result.lots.values()],
            }
        return summary

    @app.get("/api/districts", tags=["evaluation"])
    def districts(
        gates: Literal["passed", "failed"] | None = None,
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Evaluated transformer areas by name: gates, line loss, how many meters are evaluable."""
        passed = None if gates is None else gates == "passed"
        after = decode_cursor(cursor) if cursor else None
        rows = ctx.state.list_districts(after, limit + 1, passed)
        items = [district_summary(b) for b in rows[:limit]]
        more = len(rows) > limit
        return {"items": items, "next": encode_cursor(items[-1]["district"]) if more else None}

    @app.get("/api/districts/{district}", tags=["evaluation"])
    def district(district: str) -> dict[str, Any]:
        """Energy-balance result of a transformer area: per-meter errors, line loss, fit."""
        body = ctx.state.district(district)
        if body is None:
            raise HTTPException(
                404,
                f"district {district!r} has not been evaluated "
                "(unknown, or no evaluation yet: POST /api/evaluate)",
            )
        return body

    @app.get("/api/lots/{lot}", tags=["evaluation"])
    def lot(lot: str) -> dict[str, Any]:
        """Lot decision with its indicators, sampling plan, drawn meters and sample results."""
        body = ctx.state.decision("lot", lot)
        if body is None:
            raise HTTPException(
                404,
                f"lot {lot!r} has no decision (unknown lot, or no evaluation "
                "yet: POST /api/evaluate)",
            )
        return body

    @app.post("/api/lots/{lot}/sample-results", tags=["evaluation"])
    def sample_results(lot: str, results: list[SampleResultIn]) -> dict[str, Any]:
        """Laboratory results for drawn meters; the lot is re-judged against its plan's Ac/Re."""
        body = ctx.state.decision("lot", lot)
        if body is None:
            raise HTTPException(404, f"lot {lot!r} has no decision yet")
        drawn = set(body.get("drawn") or [])
        if not drawn:
            raise HTTPException(
                409,
                f"lot {lot!r} has no sample drawn (decision "
                f"{body['decision']!r}): nothing to record results for",
            )
        _check_results(results, drawn)
        ctx.state.save_sample_results(
            lot, [SampleRow(r.meter, r.error_pct, r.passed) for r in results]
        )
        decided = ctx.evaluator.rejudge_lot(lot, ctx.rules())
        assert decided is not None
        return decided.as_dict()


def _check_results(results: list[SampleResultIn], drawn: set[str]) -> None:
    if not results:
        raise HTTPException(400, "no results in the body")
    names = [r.meter for r in results]
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise HTTPException(422, f"meter(s) listed twice: {dupes}")
    strangers = sorted(set(names) - drawn)
    if strangers:
        raise HTTPException(422, f"meter(s) {strangers} were not drawn for this lot's sample")


class WorkOrderIn(BaseModel):
    """An authorised intervention on a meter, open from `from` to `to` (both included)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    meter: str = Field(pattern=ID_PATTERN.pattern)
    start: str = Field(alias="from", description="RFC 3339 or epoch ms")
    end: str = Field(alias="to", description="RFC 3339 or epoch ms")
    reason: str = Field(min_length=3, max_length=500)


def _workorder_json(row: tuple[int, str, int, int, str, str]) -> dict[str, Any]:
    wid, meter, start, end, reason, created = row
    return {
        "id": wid,
        "meter": meter,
        "from": format_ts(start),
        "to": format_ts(end),
        "reason": reason,
        "created_at": created,
    }


def _add_taxi(app: FastAPI, ctx: ApiContext) -> None:
    page_max = ctx.settings.api.page_max

    @app.post("/api/workorders", tags=["taxi"], status_code=201)
    def add_workorder(order: WorkOrderIn) -> dict[str, Any]:
        """Register a work order: a seal break or parameter change inside it is expected."""
        start, end = _time_param("from", order.start), _time_param("to", order.end)
        assert start is not None and end is not None
        if end <= start:
            raise HTTPException(400, "'to' must be after 'from'")
        wid = ctx.state.add_workorder(order.meter, start, end, order.reason)
        return _workorder_json((wid, order.meter, start, end, order.reason, ""))

    @app.get("/api/workorders", tags=["taxi"])
    def list_workorders(
        meter: str | None = None,
        limit: int = Query(100, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Work orders, oldest first."""
        after = int(decode_cursor(cursor)) if cursor else 0
        rows = ctx.state.workorders(meter, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [_workorder_json(r) for r in rows],
            "next": encode_cursor(str(rows[-1][0])) if more else None,
        }

    @app.post("/api/tariffs/{version}/rollout", tags=["taxi"], status_code=201)
    async def rollout(version: str, request: Request) -> dict[str, Any]:
        """Validate and store a tariff, push it to taxi meters, and track their answers."""
        body = await _json_object(request)
        return _start_rollout(ctx, version, body)

    @app.get("/api/tariffs/{version}", tags=["taxi"])
    def rollout_progress(version: str, as_of: str | None = None) -> dict[str, Any]:
        """Per meter: pending, applied or overdue (judged at as_of, default latest telemetry)."""
        return rollout_progress_of(ctx, version, _time_param("as_of", as_of))


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "body must be a JSON object: the tariff body of docs/mqtt.md")
    return body


def _start_rollout(ctx: ApiContext, version: str, body: dict[str, Any]) -> dict[str, Any]:
    if not ID_PATTERN.match(version):
        raise HTTPException(400, f"version {version!r} is not [A-Za-z0-9_.:-]{{1,64}}")
    meters = body.pop("meters", None)
    try:
        # Named explicitly before it is stored and sent, so that a meter and every
        # later pass read the night window in the same zone.
        tariff = Tariff.model_validate(body).in_zone(ctx.settings.scheduling.timezone)
    except ValidationError as exc:
        raise HTTPException(422, "tariff refused, nothing stored: " + _explain(exc)) from None
    if ctx.state.tariff(version) is not None:
        raise HTTPException(409, f"tariff {version!r} was already rolled out; use a new version")
    targets = _targets(ctx, meters)
    eff = parse_ts(tariff.effective_from.isoformat())
    deadline = eff + int(ctx.rules().rules.taxi.tariff.deadline_h * 3_600_000)
    stored = tariff.model_dump(mode="json")
    ctx.state.save_tariff(version, stored, eff, deadline, targets)
    if ctx.publish is not None:
        root = ctx.settings.mqtt.topic_root
        command = {"version": version, "effective_from": stored["effective_from"], "tariff": stored}
        payload = json.dumps(command, separators=(",", ":")).encode()
        unsent = []
        for meter in targets:
            # Retained: a meter that was offline gets its current tariff when it reconnects.
            try:
                ctx.publish(f"{root}/taxi/{meter}/cmd/tariff", payload, True)
            except ConnectionError:
                unsent.append(meter)
        if unsent:
            raise HTTPException(
                503,
                f"tariff {version!r} stored, but the broker is unreachable: "
                f"commands not sent to {len(unsent)} meter(s); they stay "
                "pending and go overdue unless the rollout is repeated",
            )
    return rollout_progress_of(ctx, version, None)


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def _targets(ctx: ApiContext, meters: object) -> list[str]:
    known = {r.meter_id for r in ctx.state.registry_rows("taxi")} | set(ctx.state.all_seen("taxi"))
    if meters is None:
        if not known:
            raise HTTPException(409, "no taxi meters known (registry or telemetry) to push to")
        return sorted(known)
    if not isinstance(meters, list) or not all(isinstance(m, str) for m in meters) or not meters:
        raise HTTPException(422, "meters must be a non-empty list of taxi meter ids")
    unknown = sorted(set(meters) - known)
    if unknown:
        raise HTTPException(422, f"not known taxi meters: {unknown}; nothing stored")
    return sorted(set(meters))


def rollout_progress_of(ctx: ApiContext, version: str, as_of_ms: int | None) -> dict[str, Any]:
    """A rollout's progress at `as_of_ms` (default: the newest telemetry); 404 if unknown."""
    found = ctx.state.tariff(version)
    if found is None:
        raise HTTPException(404, f"tariff {version!r} has not been rolled out")
    _, eff, deadline, meters = found
    plan = Rollout(version, eff, deadline, meters)
    as_of = as_of_ms if as_of_ms is not None else (ctx.state.latest_event_ts() or eff)
    start = eff - 86_400_000  # a meter may apply ahead of the effective time
    seen = applied_at(
        version,
        ctx.store.points(TAXI_EVENT, start, as_of),
        ctx.store.points(TAXI_STATUS, start, as_of),
    )
    return rollout_summary(plan, progress(plan, seen, as_of), as_of)


class AlertActionIn(BaseModel):
    """Who acts on an alert, and why."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200)
    comment: str = Field("", max_length=4000)


def _add_alerts(app: FastAPI, ctx: ApiContext) -> None:
    page_max = ctx.settings.api.page_max

    def book() -> AlertBook:
        if ctx.alerts is None:
            raise HTTPException(503, "alerts are not kept by this instance")
        return ctx.alerts

    @app.get("/api/alerts", tags=["alerts"])
    def list_alerts(
        status: Literal["open", "acknowledged", "resolved"] | None = None,
        severity: Literal["critical", "major", "minor", "info"] | None = None,
        since: str | None = None,
        limit: int = Query(100, ge=1, le=page_max),
        cursor: str | None = None,
        kind: Literal["elec", "taxi", "lot", "district"] | None = None,
        district: str | None = None,
        meter: str | None = None,
        lot: str | None = None,
    ) -> dict[str, Any]:
        """The alert inbox, oldest first; `since` filters on last_seen (event time)."""
        after = int(decode_cursor(cursor)) if cursor else 0
        rows = book().list(
            status,
            severity,
            _time_param("since", since),
            after,
            limit + 1,
            kind=kind,
            district=district,
            meter=meter,
            lot=lot,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": rows, "next": encode_cursor(str(rows[-1]["id"])) if more else None}

    @app.get("/api/alerts/{alert_id}", tags=["alerts"])
    def get_alert(alert_id: int) -> dict[str, Any]:
        """One alert with its history."""
        found = book().get(alert_id)
        if found is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return found

    def act(
        alert_id: int, action: Literal["ack", "resolve"], body: AlertActionIn
    ) -> dict[str, Any]:
        # A person acts at the newest telemetry time (event clock, like every other
        # step); the book records the wall clock beside it, as an audit time.
        try:
            change = book().act(
                alert_id, action, body.actor, body.comment, ctx.state.latest_event_ts()
            )
        except KeyError:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from None
        if ctx.notify is not None:
            ctx.notify([change])  # stops escalation; tells whoever was escalated to
        return change.alert

    @app.post("/api/alerts/{alert_id}/ack", tags=["alerts"])
    def ack(alert_id: int, body: AlertActionIn) -> dict[str, Any]:
        """Acknowledge an open alert (actor and comment are kept in its history)."""
        return act(alert_id, "ack", body)

    @app.post("/api/alerts/{alert_id}/resolve", tags=["alerts"])
    def resolve(alert_id: int, body: AlertActionIn) -> dict[str, Any]:
        """Resolve an open or acknowledged alert; it reopens if its condition returns."""
        return act(alert_id, "resolve", body)
