"""Time: units, and event time as epoch milliseconds in and out (RFC 3339 with an offset).

Decisions run on event time; the wall clock is used only to validate what arrives
(and to stamp when it arrived). Whatever reads it takes a `Clock`, so that a test or
the demo can hand it another.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# The receive (wall) clock, epoch seconds: `time.time` in the service, another in tests.
Clock = Callable[[], float]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch milliseconds outside 2000..2100 are a unit mistake (seconds below, micro- or
# nanoseconds above) or garbage; `_unit_hint` says which when it can tell.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


def parse_ts(value: object) -> int:
    """Epoch milliseconds from RFC 3339 with an offset, or from integer epoch ms."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 text or integer epoch milliseconds")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        ms = _parse_rfc3339(value)
    else:
        raise ValueError("timestamp must be RFC 3339 text or integer epoch milliseconds")
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        hint = _unit_hint(ms) if isinstance(value, int) else ""
        raise ValueError(f"timestamp {value!r} is outside 2000..2100{hint}")
    return ms


def _unit_hint(number: int) -> str:
    """Which unit would put an out-of-range epoch number inside 2000..2100, if any."""
    for factor, unit in ((1000, "seconds"), (1 / 1000, "microseconds"), (1 / 1e6, "nanoseconds")):
        if MIN_TS_MS <= number * factor < MAX_TS_MS:
            return f" (epoch {unit}, not milliseconds?)"
    return ""


def _parse_rfc3339(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}") from None
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError("RFC 3339 timestamp needs an offset (Z or ±hh:mm)")
    # Integer parts of the span, floored to the millisecond (no timedelta divisions).
    span = dt - _EPOCH
    return (span.days * 86_400 + span.seconds) * 1000 + span.microseconds // 1000


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds → aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def format_ts(ms: int) -> str:
    """Epoch milliseconds → RFC 3339 UTC text with milliseconds."""
    return ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
