"""At-least-once, lossy, out-of-order delivery of what the meters produce.

Each interval's messages are turned into publish order: some periodic ones are dropped,
some are sent twice (the copy a little later, as after a missed acknowledgement) and
some are held back a few intervals (a data concentrator flushing a backlog). The output
of every interval is sorted by publish time and never earlier than what came before.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from monitor.simulate.spec import FleetSpec, Produced, SimMessage

_MAX_DELAY_INTERVALS = 4
_RESEND_MS = (5_000, 120_000)


@dataclass
class DeliveryCounts:
    """What the delivery defects did so far, so a simulator can say what it never sent."""

    produced: int = 0
    withheld: int = 0
    """Periodic messages dropped on purpose (`missing_rate`): never published."""
    duplicated: int = 0
    """Messages handed out a second time (`duplicate_rate`)."""
    delayed: int = 0
    """Messages held back a few intervals (`disorder_rate`)."""


class Delivery:
    """Applies the spec's missing, duplicate and disorder rates and keeps publish order."""

    def __init__(self, spec: FleetSpec) -> None:
        """An empty delivery queue."""
        self.spec = spec
        self.counts = DeliveryCounts()
        self._late: list[tuple[int, int, SimMessage]] = []
        self._order = 0

    def deliver(
        self, produced: Produced, until_ms: int, rng: np.random.Generator
    ) -> list[tuple[int, SimMessage]]:
        """(publish_ms, message) of everything to publish before `until_ms`, in order.

        `produced` must have event times before `until_ms` and not before the previous
        call's `until_ms`. Messages due at the same time keep the order they were made in.
        """
        spec = self.spec
        messages = produced.periodic + produced.reliable
        n = len(messages)
        draws = rng.random((3, n))
        delays = rng.integers(1, _MAX_DELAY_INTERVALS + 1, n) * spec.interval_ms
        delays += rng.integers(0, spec.interval_ms // 2, n)
        resend = rng.integers(*_RESEND_MS, n)
        droppable = np.arange(n) < len(produced.periodic)
        kept = ~(droppable & (draws[0] < spec.missing_rate))
        late = kept & (draws[1] < spec.disorder_rate)
        twice = kept & (draws[2] < spec.duplicate_rate)
        self._count(n, kept, late, twice)
        publish = np.array([m.event_ms for m in messages], np.int64) + delays * late
        for i in np.flatnonzero(late).tolist():
            self._hold(int(publish[i]), messages[i])
        for i in np.flatnonzero(twice).tolist():
            self._hold(int(publish[i] + resend[i]), messages[i])
        ready = [(messages[i].event_ms, messages[i]) for i in np.flatnonzero(kept & ~late).tolist()]
        while self._late and self._late[0][0] < until_ms:
            publish_ms, _, message = heapq.heappop(self._late)
            ready.append((publish_ms, message))
        ready.sort(key=itemgetter(0))  # stable: ties keep production order
        return ready

    def _count(self, n: int, kept: np.ndarray, late: np.ndarray, twice: np.ndarray) -> None:
        c = self.counts
        c.produced += n
        c.withheld += n - int(kept.sum())
        c.delayed += int(late.sum())
        c.duplicated += int(twice.sum())

    def _hold(self, publish_ms: int, message: SimMessage) -> None:
        self._order += 1  # ties in the heap break by insertion order, never by message
        heapq.heappush(self._late, (publish_ms, self._order, message))
