"""Taxi meters: work orders, tariff rollouts and their progress."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.api.context import ApiContext, decode_seq_cursor, encode_cursor, time_param
from monitor.api.scope import caller, require, scoped_page
from monitor.core.clock import DAY_MS, HOUR_MS, format_ts, parse_ts
from monitor.core.ports import WorkOrderRow
from monitor.core.schema import (
    ID_PATTERN,
    TAXI_EVENT,
    TAXI_STATUS,
)
from monitor.platform.access import Principal
from monitor.taxi.rollout import Rollout, applied_at, progress
from monitor.taxi.rollout import summary as rollout_summary
from monitor.taxi.tariff import Tariff


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


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()

    page_max = ctx.settings.api.page_max

    @r.post("/api/workorders", tags=["taxi"], status_code=201)
    def add_workorder(request: Request, order: WorkOrderIn) -> dict[str, Any]:
        """Register a work order: a seal break or parameter change inside it is expected."""
        who = caller(request)
        # A scoped caller names only meters it sees; unknown ones get the same answer.
        require(
            who.everywhere or ctx.scopes.meter(who, order.meter),
            f"meter {order.meter!r} is not in the registry and has sent no telemetry",
        )
        start, end = time_param("from", order.start), time_param("to", order.end)
        assert start is not None and end is not None
        if end <= start:
            raise HTTPException(400, "'to' must be after 'from'")
        wid = ctx.state.add_workorder(order.meter, start, end, order.reason)
        made = _workorder_json((wid, order.meter, start, end, order.reason, ""))
        ctx.record(request, "workorder.add", f"meter:{order.meter}", made)
        return made

    @r.get("/api/workorders", tags=["taxi"])
    def list_workorders(
        request: Request,
        meter: str | None = None,
        limit: int = Query(100, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Work orders, oldest first."""
        who = caller(request)

        def fetch(after: str | None, n: int) -> list[WorkOrderRow]:
            return ctx.state.workorders(meter, int(after or 0), n)

        rows, more = scoped_page(
            fetch,
            lambda row: ctx.scopes.meter(who, row.meter),
            lambda row: str(row.id),
            str(decode_seq_cursor(cursor)),
            limit,
        )
        return {
            "items": [_workorder_json(r) for r in rows],
            "next": encode_cursor(str(rows[-1][0])) if more else None,
        }

    @r.post("/api/tariffs/{version}/rollout", tags=["taxi"], status_code=201)
    async def rollout(version: str, request: Request) -> dict[str, Any]:
        """Validate and store a tariff, push it to taxi meters, and track their answers."""
        body = await _json_object(request)
        sent = dict(body)
        try:
            progress = _start_rollout(ctx, version, body, caller(request))
        except HTTPException as exc:
            if exc.status_code == 503:  # stored, though not sent: still a change
                ctx.record(request, "tariff.rollout", f"tariff:{version}", {"request": sent})
            raise
        ctx.record(
            request,
            "tariff.rollout",
            f"tariff:{version}",
            {"request": sent, "targeted": progress["targeted"]},
        )
        return progress

    @r.get("/api/tariffs/{version}", tags=["taxi"])
    def rollout_progress(
        request: Request, version: str, as_of: str | None = None
    ) -> dict[str, Any]:
        """Per meter: pending, applied or overdue (judged at as_of, default latest telemetry)."""
        return rollout_progress_of(ctx, version, time_param("as_of", as_of), caller(request))

    return r


def _start_rollout(
    ctx: ApiContext, version: str, body: dict[str, Any], who: Principal
) -> dict[str, Any]:
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
    targets = _targets(ctx, meters, who)
    eff = parse_ts(tariff.effective_from.isoformat())
    deadline = eff + int(ctx.rules().rules.taxi.tariff.deadline_h * HOUR_MS)
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
    return rollout_progress_of(ctx, version, None, who)


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def _targets(ctx: ApiContext, meters: object, who: Principal) -> list[str]:
    known = {r.meter_id for r in ctx.state.registry_rows("taxi")} | set(ctx.state.all_seen("taxi"))
    if not who.everywhere:  # a scoped caller pushes to, and hears of, its own meters only
        known = {m for m in known if ctx.scopes.meter(who, m)}
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


def rollout_progress_of(
    ctx: ApiContext, version: str, as_of_ms: int | None, who: Principal
) -> dict[str, Any]:
    """A rollout's progress at `as_of_ms` (default: the newest telemetry); 404 if unknown.
    A scoped caller sees its own meters of it (none: as if unknown)."""
    found = ctx.state.tariff(version)
    meters = [] if found is None else [m for m in found.meters if ctx.scopes.meter(who, m)]
    if found is None or not meters:
        raise HTTPException(404, f"tariff {version!r} has not been rolled out")
    _, eff, deadline, _ = found
    plan = Rollout(version, eff, deadline, meters)
    as_of = as_of_ms if as_of_ms is not None else (ctx.state.latest_event_ts() or eff)
    start = eff - DAY_MS  # a meter may apply ahead of the effective time
    seen = applied_at(
        version,
        ctx.store.points(TAXI_EVENT, start, as_of),
        ctx.store.points(TAXI_STATUS, start, as_of),
    )
    return rollout_summary(plan, progress(plan, seen, as_of), as_of)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "body must be a JSON object: the tariff body of docs/mqtt.md")
    return body
