"""What every route reads and writes (`ApiContext`), and the conventions they share: keyset cursors, time parameters, a future `as_of` refused."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import HTTPException, Path, Request

from monitor.alerts.book import AlertBook, Change
from monitor.api.scope import Scopes, caller
from monitor.core.clock import parse_ts
from monitor.core.ports import AuditEntry, AuditLog, Publisher, StateStore, TelemetryStore
from monitor.core.rulebook import RuleBook
from monitor.evaluation.runner import Evaluator, future_as_of
from monitor.evaluation.shadow import RulesDesk
from monitor.platform.access import AccessBook
from monitor.platform.config import Settings
from monitor.platform.metrics import Metrics


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
    publish: Publisher | None = None
    alerts: AlertBook | None = None
    notify: Callable[[Sequence[Change]], None] | None = None
    # The receive clock (epoch s): requests are validated against it, never decided by it.
    clock: Callable[[], float] = time.time
    # The rules in force, the candidate beside them and promotion (None: built from the
    # settings on first use, without a reload hook).
    rules_desk: RulesDesk | None = None
    # The access file in force; None is open mode (every route open; loopback only).
    access: Callable[[], AccessBook | None] = lambda: None
    audit: AuditLog | None = None
    scopes: Scopes = field(init=False)

    def __post_init__(self) -> None:
        self.scopes = Scopes(self.state)

    def record(self, request: Request, action: str, subject: str, detail: dict[str, Any]) -> None:
        """Append a state change made through the API to the audit log, as its caller."""
        if self.audit is None:
            return
        who = caller(request)
        self.audit.append(AuditEntry(who.name, who.role, action, subject, jsonable(detail)))


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


def decode_seq_cursor(cursor: str | None) -> int:
    """A cursor over integer ids (alerts, work orders); 0 without one, 400 if not ours."""
    if not cursor:
        return 0
    text = decode_cursor(cursor)
    if not text.isdigit() or int(text) > MAX_ID:
        raise HTTPException(400, f"cursor {cursor!r} is not one this API returned")
    return int(text)


# The largest id SQLite (and PostgreSQL's bigint) can hold: a larger one is refused
# as a bad request, never passed to the database.
MAX_ID = 2**63 - 1
AlertId = Annotated[int, Path(ge=1, le=MAX_ID, description="the alert's id")]


def time_param(name: str, value: str | None) -> int | None:
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


def jsonable(value: Any) -> Any:
    """Drop what JSON cannot carry from pydantic error lists."""
    return json.loads(json.dumps(value, default=str))
