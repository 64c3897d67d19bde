"""What every route reads and writes (`ApiContext`), and the conventions they share: keyset cursors, time parameters, a future `as_of` refused."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from monitor.alerts.book import AlertBook, Change
from monitor.core.clock import parse_ts
from monitor.core.ports import Publisher, StateStore, TelemetryStore
from monitor.core.rulebook import RuleBook
from monitor.evaluation.runner import Evaluator, future_as_of
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
