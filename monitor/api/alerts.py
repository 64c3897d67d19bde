"""The alert inbox: list, one alert, acknowledge, resolve."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from monitor.alerts.book import AlertBook, TransitionError
from monitor.api.context import AlertId, ApiContext, decode_seq_cursor, encode_cursor, time_param
from monitor.api.regions import RegionCache, known_region
from monitor.api.scope import caller, scoped_page
from monitor.platform.access import Principal


class AlertActionIn(BaseModel):
    """Who acts on an alert, and why. With an access file in force the token's name is
    the actor (a different `actor` given is kept beside it: "wang via authority-1")."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field("", max_length=200)
    comment: str = Field("", max_length=4000)


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()
    regions = RegionCache(ctx.state)

    page_max = ctx.settings.api.page_max

    def book() -> AlertBook:
        if ctx.alerts is None:
            raise HTTPException(503, "alerts are not kept by this instance")
        return ctx.alerts

    @r.get("/api/alerts", tags=["alerts"])
    def list_alerts(
        request: Request,
        status: Literal["open", "acknowledged", "resolved"] | None = None,
        severity: Literal["critical", "major", "minor", "info"] | None = None,
        since: str | None = None,
        limit: int = Query(100, ge=1, le=page_max),
        cursor: str | None = None,
        kind: Literal["elec", "taxi", "lot", "district"] | None = None,
        district: str | None = None,
        meter: str | None = None,
        lot: str | None = None,
        region: str | None = None,
    ) -> dict[str, Any]:
        """The alert inbox, oldest first; `since` filters on last_seen (event time);
        `region`: alerts on that region's meters, lots and districts."""
        index = regions()
        wanted = known_region(index, region)
        since_ms = time_param("since", since)
        who = caller(request)

        def fetch(after: str | None, n: int) -> list[dict[str, Any]]:
            return book().list(
                status,
                severity,
                since_ms,
                int(after or 0),
                n,
                kind=kind,
                district=district,
                meter=meter,
                lot=lot,
            )

        def keep(alert: dict[str, Any]) -> bool:
            in_region = wanted is None or index.in_region(
                wanted, alert.get("meter"), alert.get("lot"), alert.get("district")
            )
            return in_region and ctx.scopes.alert(who, alert)

        rows, more = scoped_page(
            fetch, keep, lambda alert: str(alert["id"]), str(decode_seq_cursor(cursor)), limit
        )
        return {"items": rows, "next": encode_cursor(str(rows[-1]["id"])) if more else None}

    @r.get("/api/alerts/{alert_id}", tags=["alerts"])
    def get_alert(request: Request, alert_id: AlertId) -> dict[str, Any]:
        """One alert with its history."""
        return visible_alert(caller(request), alert_id)

    def visible_alert(who: Principal, alert_id: int) -> dict[str, Any]:
        found = book().get(alert_id)
        if found is None or not ctx.scopes.alert(who, found):
            raise HTTPException(404, f"no alert {alert_id}")
        return found

    def act(
        request: Request, alert_id: int, action: Literal["ack", "resolve"], body: AlertActionIn
    ) -> dict[str, Any]:
        who = caller(request)
        before = visible_alert(who, alert_id)
        actor = _actor(who, body.actor)
        # A person acts at the newest telemetry time (event clock, like every other
        # step); the book records the wall clock beside it, as an audit time.
        try:
            change = book().act(alert_id, action, actor, body.comment, ctx.state.latest_event_ts())
        except KeyError:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from None
        ctx.record(
            request,
            f"alert.{action}",
            f"alert:{alert_id}",
            {
                "actor": actor,
                "comment": body.comment,
                "before": before["status"],
                "after": change.alert["status"],
            },
        )
        if ctx.notify is not None:
            ctx.notify([change])  # stops escalation; tells whoever was escalated to
        return change.alert

    @r.post("/api/alerts/{alert_id}/ack", tags=["alerts"])
    def ack(request: Request, alert_id: AlertId, body: AlertActionIn) -> dict[str, Any]:
        """Acknowledge an open alert (actor and comment are kept in its history)."""
        return act(request, alert_id, "ack", body)

    @r.post("/api/alerts/{alert_id}/resolve", tags=["alerts"])
    def resolve(request: Request, alert_id: AlertId, body: AlertActionIn) -> dict[str, Any]:
        """Resolve an open or acknowledged alert; it reopens if its condition returns."""
        return act(request, alert_id, "resolve", body)

    return r


def _actor(who: Principal, stated: str) -> str:
    """Who the alert's history names: the token's name (open mode: the stated actor)."""
    stated = stated.strip()
    if who.open_mode:
        if not stated:
            raise HTTPException(422, "body.actor: who acts is required in open mode")
        return stated
    return who.name if stated in ("", who.name) else f"{stated} via {who.name}"
