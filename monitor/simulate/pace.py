"""Publish a simulated fleet at a chosen speed of simulated time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from monitor.simulate.fleet import Fleet

_MAX_NAP_S = 0.5  # wake up at least this often to notice `stop`


def run_paced(
    fleet: Fleet,
    publish: Callable[[str, bytes], None],
    start_ms: int,
    speed: float,
    stop: threading.Event,
    end_ms: int | None = None,
    backfill_ms: int = 0,
    wall_clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
    not_after: Callable[[], float] | None = None,
) -> int:
    """Publish the fleet's messages as simulated time passes; return how many were published.

    The simulated clock reads `start_ms + backfill_ms + elapsed wall seconds × speed × 1000`,
    so the first `backfill_ms` of history goes out as fast as `publish` allows and the rest
    as the clock passes each message's event time. Runs until `end_ms` (exclusive; None:
    forever) or until `stop` is set. `wall_clock` and `sleep` (default: `stop.wait`) are
    injectable so tests need not sleep.

    `not_after` (epoch seconds, e.g. `time.time`) keeps the simulated clock from running
    ahead of the present: once it catches up, messages go out in real time. A service
    rightly refuses telemetry stamped in its future, so a demo must never produce any.
    """
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed!r}")
    nap = sleep if sleep is not None else stop.wait
    origin_wall, origin_ms = wall_clock(), start_ms + backfill_ms

    def due_in_s(event_ms: int) -> float:
        """Wall seconds until `event_ms` is due (<= 0: due now)."""
        simulated_ms = origin_ms + (wall_clock() - origin_wall) * speed * 1000
        due = (event_ms - simulated_ms) / 1000 / speed
        if not_after is not None:
            due = max(due, event_ms / 1000 - not_after())
        return due

    chunk_ms = fleet.spec.interval_ms
    published, cursor = 0, start_ms
    while not stop.is_set() and (end_ms is None or cursor < end_ms):
        upto = cursor + chunk_ms if end_ms is None else min(cursor + chunk_ms, end_ms)
        for message in fleet.messages(cursor, upto):
            while (wait_s := due_in_s(message.event_ms)) > 0:
                if stop.is_set():
                    return published
                nap(min(wait_s, _MAX_NAP_S))
            if stop.is_set():
                return published
            publish(message.topic, message.payload)
            published += 1
        cursor = upto
    return published
