"""Rules: the candidate beside the rules in force, its shadow differences, promotion."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from monitor.api.context import ApiContext, decode_cursor, encode_cursor
from monitor.core.rulebook import diff
from monitor.core.yamlfile import ConfigError
from monitor.evaluation.shadow import CandidateError, RulesDesk


class PromoteIn(BaseModel):
    """Who promotes the candidate, and why."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200)
    comment: str = Field("", max_length=4000)
    candidate_version: str | None = Field(
        None,
        description="refuse (409) unless this is the candidate's version, e.g. the one reviewed",
    )


def desk_of(ctx: ApiContext) -> RulesDesk:
    """The context's rules desk, or one over the settings' files."""
    if ctx.rules_desk is None:
        ctx.rules_desk = RulesDesk(
            ctx.settings.rules_file, ctx.settings.storage.data_dir, in_force=ctx.rules
        )
    return ctx.rules_desk


def _refused(exc: ConfigError) -> JSONResponse:
    problems = [str(p) for p in exc.problems]
    return JSONResponse(
        {"detail": f"candidate refused: {'; '.join(problems[:5])}", "problems": problems}, 422
    )


def router(ctx: ApiContext) -> APIRouter:
    """The routes of this module over one context."""
    r = APIRouter()
    page_max = ctx.settings.api.page_max

    @r.get("/api/rules", tags=["rules"])
    def rules() -> dict[str, Any]:
        """The rules in force and the candidate beside them (with what it changes)."""
        desk = desk_of(ctx)
        current, candidate = desk.in_force(), desk.candidate()
        source = desk.source()
        return {
            "in_force": {"version": current.version, "source": current.source},
            "candidate": None
            if candidate is None
            else {
                "version": candidate.version,
                "source": str(source),
                "changes": diff(current, candidate),
            },
            "candidate_error": desk.last_error,
            "promotions": len(desk.promotions()),
        }

    @r.put(
        "/api/rules/candidate",
        tags=["rules"],
        openapi_extra={
            "requestBody": {
                "content": {"application/yaml": {"schema": {"type": "string"}}},
                "required": True,
            }
        },
    )
    async def put_candidate(request: Request) -> JSONResponse:
        """Upload a candidate rules file (YAML, the shape of config/rules.yaml); every pass
        then also evaluates it, without publishing, alerting or moving due dates."""
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(400, "body is not UTF-8") from None
        if not text.strip():
            raise HTTPException(400, "no rules in the body")
        desk = desk_of(ctx)
        try:
            book = desk.upload(text)
        except ConfigError as exc:
            return _refused(exc)
        ctx.record(request, "rules.candidate", book.version, {"uploaded": book.version})
        return JSONResponse({"version": book.version, "changes": diff(desk.in_force(), book)})

    @r.delete("/api/rules/candidate", tags=["rules"])
    def delete_candidate(request: Request) -> dict[str, Any]:
        """Withdraw the uploaded candidate (a config/rules.candidate.yaml stays)."""
        if not desk_of(ctx).withdraw():
            raise HTTPException(404, "no uploaded candidate to withdraw")
        ctx.record(request, "rules.candidate", "withdrawn", {"withdrawn": True})
        return {"withdrawn": True}

    @r.get("/api/rules/shadow", tags=["rules"])
    def shadow(
        scope: Literal["meter", "lot"] | None = None,
        change: str | None = Query(None, description="e.g. extend→resample (or extend->resample)"),
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Where the candidate decides differently from the rules in force at the latest
        pass: per meter and lot, both sides' decisions and reasons, counts by change."""
        desk = desk_of(ctx)
        report = desk.report()
        candidate = desk.candidate()
        if candidate is None:
            why = desk.last_error or "put config/rules.candidate.yaml or PUT /api/rules/candidate"
            raise HTTPException(404, f"no candidate rules: {why}")
        if report is None or report.candidate_version != candidate.version:
            raise HTTPException(
                409,
                f"no pass has evaluated candidate {candidate.version} yet "
                "(the next scheduled pass will, or POST /api/evaluate)",
            )
        wanted = change.replace("->", "→") if change else None
        rows = [
            d
            for d in report.differences
            if (scope is None or d["scope"] == scope) and (wanted is None or d["change"] == wanted)
        ]
        after = decode_cursor(cursor) if cursor else None
        keys = [f"{d['scope']}:{d['id']}" for d in rows]
        start = keys.index(after) + 1 if after in keys else 0
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return {
            "as_of": report.as_of,
            "rules_version": report.rules_version,
            "candidate_version": report.candidate_version,
            "compared": report.compared,
            "counts": report.counts,
            "items": page,
            "next": encode_cursor(f"{page[-1]['scope']}:{page[-1]['id']}") if more else None,
        }

    @r.post("/api/rules/promote", tags=["rules"])
    def promote(request: Request, body: PromoteIn) -> dict[str, Any]:
        """Make the candidate the rules in force (one recorded action: who, when, versions,
        what changed); the service takes it at once."""
        desk = desk_of(ctx)
        candidate = desk.candidate()
        if body.candidate_version is not None and (
            candidate is None or candidate.version != body.candidate_version
        ):
            found = candidate.version if candidate else "none"
            raise HTTPException(
                409, f"the candidate is {found}, not {body.candidate_version}: review it again"
            )
        try:
            done = desk.promote(body.actor, body.comment)
        except ConfigError as exc:
            raise HTTPException(422, f"candidate refused: {exc}") from None
        except CandidateError as exc:
            raise HTTPException(409, str(exc)) from None
        promoted = done.as_dict()
        ctx.record(request, "rules.promote", done.to_version, promoted)
        return promoted

    @r.get("/api/rules/promotions", tags=["rules"])
    def promotions(
        limit: int = Query(ctx.settings.api.page_default, ge=1, le=page_max),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Every promotion, oldest first: who, when, from and to which version, what changed."""
        done = desk_of(ctx).promotions()
        start = int(decode_cursor(cursor)) if cursor else 0
        page = [p.as_dict() for p in done[start : start + limit]]
        more = start + limit < len(done)
        return {"items": page, "next": encode_cursor(str(start + limit)) if more else None}

    return r
