"""Meters seen, gathered in memory between writes to the state (both backends).

A meter sending every second would cost one upsert per message; gathered here, it costs
one per flush. A flush that fails puts what it took back, so nothing is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from monitor.core.ports import SeenUpdate
from monitor.core.schema import Record


class _Seen:
    """One meter's tally (mutable, slotted: updated once per message)."""

    __slots__ = ("district", "first", "kind", "last", "messages", "received")

    def __init__(
        self, kind: str, district: str | None, first: int, last: int, messages: int, received: float
    ) -> None:
        self.kind, self.district = kind, district
        self.first, self.last, self.messages, self.received = first, last, messages, received


class SeenBuffer:
    """What ingest saw of each meter since the last flush (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, _Seen] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def note_seen(self, updates: Mapping[str, SeenUpdate]) -> None:
        """Add per-meter summaries (kind, district, span, count)."""
        with self._lock:
            pending = self._pending
            for meter, u in updates.items():
                p = pending.get(meter)
                if p is None:
                    pending[meter] = _Seen(
                        u.kind, u.district, u.first_ts, u.last_ts, u.messages, u.received_at
                    )
                    continue
                p.district = u.district or p.district
                p.first = min(p.first, u.first_ts)
                p.last = max(p.last, u.last_ts)
                p.messages += u.messages
                p.received = max(p.received, u.received_at)

    def note_records(self, records: Iterable[Record], received_at: float) -> None:
        """Add the meters of a batch of telemetry (one pass over the batch)."""
        with self._lock:
            pending = self._pending
            for r in records:
                ts = r.ts_ms
                p = pending.get(r.meter)
                if p is None:
                    pending[r.meter] = _Seen(r.measurement.kind, r.district, ts, ts, 1, received_at)
                    continue
                if ts < p.first:
                    p.first = ts
                elif ts > p.last:
                    p.last = ts
                p.messages += 1
                p.received = received_at
                if r.district:  # the newest district named wins, as in note_seen
                    p.district = r.district

    def take(self) -> dict[str, SeenUpdate]:
        """Everything gathered so far, emptied (districts never named are "")."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return {
            m: SeenUpdate(p.kind, p.district or "", p.first, p.last, p.messages, p.received)
            for m, p in pending.items()
        }

    def put_back(self, taken: Mapping[str, SeenUpdate]) -> None:
        """A failed write's meters, merged into what arrived since (written next flush)."""
        self.note_seen(taken)
