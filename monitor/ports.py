"""The seams between the parts: small protocols, one implementation per backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.schema import Measurement, Record


@dataclass(frozen=True)
class StoreHealth:
    """What `/healthz` and the metrics report about a telemetry store."""

    writable: bool
    backend: str
    buffered_points: int = 0
    dropped_points: int = 0
    detail: str = ""


@dataclass(frozen=True)
class Point:
    """One stored point read back: time and the values of one measurement."""

    ts_ms: int
    values: dict[str, Any] = field(default_factory=dict)


class TelemetryStore(Protocol):
    """Where validated telemetry is kept (embedded SQLite or InfluxDB)."""

    backend: str

    def write(self, records: Sequence[Record]) -> None:
        """Store a batch durably (or spill it durably); raise if that is impossible."""

    def history(
        self,
        measurement: Measurement,
        meter: str,
        fields: Sequence[str],
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
    ) -> list[Point]:
        """A meter's points of one measurement in [start, end), oldest first."""
        ...

    def latest(self, measurement: Measurement, meter: str) -> Point | None:
        """The newest point of a meter in one measurement (by event time)."""
        ...

    def health(self) -> StoreHealth:
        """Writable or not, and what is buffered or was dropped."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources."""
