"""The registry: rows added or updated from CSV or JSON."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from monitor.api.context import ApiContext
from monitor.api.scope import caller
from monitor.core.registry import MeterRow, ParsedRows, parse_csv, parse_rows, region_conflicts
from monitor.platform.access import Principal

# Rows whose before/after the audit record carries; a bigger import is recorded by its
# hash, counts and the first rows.
AUDITED_ROWS = 1000


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()

    @r.post(
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
        conflicts = region_conflicts(ctx.state.registry_rows(), parsed.rows)
        if conflicts:
            return JSONResponse(
                {"detail": f"nothing stored: {'; '.join(conflicts[:5])}", "conflicts": conflicts},
                422,
            )
        who = caller(request)
        # A scoped caller's every row is checked against what is registered now.
        looked_up = parsed.rows if not who.everywhere else parsed.rows[:AUDITED_ROWS]
        before = {r.meter_id: ctx.state.get_meter(r.meter_id) for r in looked_up}
        _check_scope(ctx, who, parsed.rows, before)
        added, updated = ctx.state.upsert_meters(parsed.rows)
        ctx.record(
            request,
            "registry.upsert",
            "registry",
            {
                "added": added,
                "updated": updated,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "changes": [_change(r, before[r.meter_id]) for r in parsed.rows[:AUDITED_ROWS]],
                "changes_left_out": max(0, len(parsed.rows) - AUDITED_ROWS),
            },
        )
        return JSONResponse({"added": added, "updated": updated})

    return r


def _check_scope(
    ctx: ApiContext, who: Principal, rows: list[MeterRow], before: dict[str, MeterRow | None]
) -> None:
    """A scoped caller writes only rows of its districts or lots, and changes only
    meters that are in its scope now (a meter cannot be moved in from another's)."""
    if who.everywhere:
        return
    outside = sorted(
        r.meter_id
        for r in rows
        if not ctx.scopes.row_in_scope(who, r.district, r.lot, r.effective_region)
        or (
            (old := before[r.meter_id]) is not None
            and not ctx.scopes.row_in_scope(who, old.district, old.lot, old.effective_region)
        )
    )
    if outside:
        raise HTTPException(
            403,
            f"{len(outside)} row(s) outside your scope {sorted(who.scope)} (their district "
            f"or lot, or the one they are registered under now): {outside[:20]}; "
            "nothing stored",
        )


def _change(row: MeterRow, old: MeterRow | None) -> dict[str, Any]:
    return {
        "meter_id": row.meter_id,
        "before": old.as_dict() if old is not None else None,
        "after": row.as_dict(),
    }


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
        try:
            return parse_csv(text)
        except csv.Error as exc:
            raise HTTPException(400, f"CSV not readable: {exc}") from None
    raise HTTPException(415, f"send text/csv or application/json, not {content_type!r}")
