"""The registry: rows added or updated from CSV or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from monitor.api.context import ApiContext
from monitor.core.registry import ParsedRows, parse_csv, parse_rows, region_conflicts


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
        added, updated = ctx.state.upsert_meters(parsed.rows)
        return JSONResponse({"added": added, "updated": updated})

    return r


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
