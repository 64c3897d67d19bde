"""The audit log: who changed what, hash-chained (`GET /api/audit`), and who is asking."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from monitor.api.context import ApiContext, decode_seq_cursor, encode_cursor
from monitor.api.scope import caller
from monitor.core.audit import record_json


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()

    page_max = ctx.settings.api.page_max

    @r.get("/api/me", tags=["access"])
    def me(request: Request) -> dict[str, Any]:
        """The caller as the service sees it: name, role, scope (open mode says so)."""
        who = caller(request)
        return {
            "name": who.name,
            "role": who.role,
            "scope": sorted(who.scope),
            "via": who.via,
            "open_mode": who.open_mode,
        }

    @r.get("/api/audit", tags=["access"])
    def audit(
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Audit records, oldest first: actor, role, time, action, subject, what changed,
        the software version, and the hash chain (`prev`, `hash`)."""
        if ctx.audit is None:
            raise HTTPException(503, "no audit log is kept by this instance")
        after = decode_seq_cursor(cursor)
        rows = ctx.audit.rows(after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [record_json(row) for row in rows],
            "next": encode_cursor(str(rows[-1].seq)) if more else None,
        }

    return r
