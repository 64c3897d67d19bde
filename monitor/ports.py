"""The seams between the parts: small protocols, one implementation per backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

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


@dataclass(frozen=True)
class Series:
    """One meter's points of one measurement, columnar, oldest first (NaN = absent)."""

    ts_ms: NDArray[np.int64]
    values: dict[str, NDArray[np.float64]]

    def column(self, name: str) -> NDArray[np.float64] | None:
        """A column, or None when the meter never sent that field."""
        col = self.values.get(name)
        if col is None or bool(np.isnan(col).all()):
            return None
        return col


@dataclass(frozen=True)
class MeterPoint:
    """A point with the meter it belongs to (events across a fleet)."""

    meter: str
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

    def series(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        district: str | None = None,
    ) -> dict[str, Series]:
        """Numeric fields of every meter (of one district) in [start, end], per meter."""
        ...

    def points(self, measurement: Measurement, start_ms: int, end_ms: int) -> list[MeterPoint]:
        """All points of a (sparse) measurement, e.g. events, in [start, end], by time."""
        ...

    def health(self) -> StoreHealth:
        """Writable or not, and what is buffered or was dropped."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources."""


def group_series(rows: Sequence[Sequence[Any]], fields: Sequence[str]) -> dict[str, Series]:
    """Rows (meter, ts, *fields) sorted by meter then ts → one Series per meter."""
    if not rows:
        return {}
    meters = [r[0] for r in rows]
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    cols = np.array([[np.nan if v is None else v for v in r[2:]] for r in rows], dtype=np.float64)
    cols = cols.reshape(len(rows), len(fields))
    out: dict[str, Series] = {}
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or meters[i] != meters[start]:
            out[meters[start]] = Series(
                ts[start:i], {f: cols[start:i, k] for k, f in enumerate(fields)}
            )
            start = i
    return out
