"""The alert inbox: list, one alert, acknowledge, resolve."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from monitor.alerts.book import AlertBook, TransitionError
from monitor.api.context import ApiContext, decode_cursor, encode_cursor, time_param
from monitor.api.regions import RegionCache, filtered_page, known_region


class AlertActionIn(BaseModel):
    """Who acts on an alert, and why."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200)
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

        def fetch(after_id: int | None, n: int) -> list[dict[str, Any]]:
            return book().list(
                status,
                severity,
                since_ms,
                after_id or 0,
                n,
                kind=kind,
                district=district,
                meter=meter,
                lot=lot,
            )

        def keep(a: dict[str, Any]) -> bool:
            return wanted is None or index.in_region(
                wanted, a.get("meter"), a.get("lot"), a.get("district")
            )

        after = int(decode_cursor(cursor)) if cursor else 0
        rows, more = filtered_page(fetch, keep, lambda a: int(a["id"]), after, limit)
        return {"items": rows, "next": encode_cursor(str(rows[-1]["id"])) if more else None}

    @r.get("/api/alerts/{alert_id}", tags=["alerts"])
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

    @r.post("/api/alerts/{alert_id}/ack", tags=["alerts"])
    def ack(alert_id: int, body: AlertActionIn) -> dict[str, Any]:
        """Acknowledge an open alert (actor and comment are kept in its history)."""
        return act(alert_id, "ack", body)

    @r.post("/api/alerts/{alert_id}/resolve", tags=["alerts"])
    def resolve(alert_id: int, body: AlertActionIn) -> dict[str, Any]:
        """Resolve an open or acknowledged alert; it reopens if its condition returns."""
        return act(alert_id, "resolve", body)

    return r
