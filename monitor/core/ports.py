"""The seams between the parts: small protocols, one implementation per backend."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from monitor.core.schema import Measurement, Record


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
class Columns:
    """One meter's points of one measurement, columnar, oldest first: every field asked
    for, numeric ones as float64 (NaN = absent), text ones as object arrays of str (None =
    absent). What a reduction over a long window reads instead of one `Point` per point."""

    ts_ms: NDArray[np.int64]
    values: dict[str, NDArray[Any]]

    def __len__(self) -> int:
        return len(self.ts_ms)


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

    def columns(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        meter: str | None = None,
    ) -> dict[str, Columns]:
        """Any fields (text too) of every meter, or of one, in [start, end], per meter
        (meters without a point left out); see `Columns`."""
        ...

    def points(self, measurement: Measurement, start_ms: int, end_ms: int) -> list[MeterPoint]:
        """All points of a (sparse) measurement, e.g. events, in [start, end], by time."""
        ...

    def health(self) -> StoreHealth:
        """Writable or not, and what is buffered or was dropped."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources."""


def meter_series(rows: Sequence[Sequence[Any]], fields: Sequence[str]) -> Series:
    """Rows (ts, *fields) of one meter, oldest first → its Series (None → NaN).

    One numpy conversion of the whole block (C loops, no per-row Python work): the
    times go through float64, exact for |ts| < 2**53 ms (checked; else converted apart).
    """
    width = len(fields) + 1
    if not rows:
        return Series(np.empty(0, dtype=np.int64), {f: np.empty(0) for f in fields})
    block = _floats(rows)
    if block.shape != (len(rows), width):
        raise ValueError(f"rows of {block.shape[1:]} columns, expected ts + {len(fields)}")
    times = block[:, 0]
    if bool(np.isnan(times).any()) or float(np.abs(times).max()) >= _EXACT:
        ts = np.array([r[0] for r in rows], dtype=np.int64)
    else:
        ts = times.astype(np.int64)
    # One contiguous row per field (strided column views would slow every later pass).
    cols = np.ascontiguousarray(block[:, 1:].T)
    return Series(ts, {f: cols[k] for k, f in enumerate(fields)})


_EXACT = float(2**53)


def _floats(values: Sequence[Any]) -> NDArray[np.float64]:
    # numpy turns None into NaN when the dtype is float.
    return np.array(values, dtype=np.float64)


def group_series(rows: Sequence[Sequence[Any]], fields: Sequence[str]) -> dict[str, Series]:
    """Rows (meter, ts, *fields) sorted by meter then ts → one Series per meter (None → NaN)."""
    if not rows:
        return {}
    columns = list(zip(*rows, strict=True))
    if len(columns) != len(fields) + 2:
        raise ValueError(f"rows have {len(columns)} columns, expected meter, ts + {len(fields)}")
    meters = np.array(columns[0], dtype=object)
    ts = np.array(columns[1], dtype=np.int64)
    cols = [_floats(c) for c in columns[2:]]
    # A meter's rows are consecutive: cut where the meter changes (compared in C).
    cuts = [0, *(np.flatnonzero(meters[1:] != meters[:-1]) + 1).tolist(), len(rows)]
    out: dict[str, Series] = {}
    for a, b in itertools.pairwise(cuts):
        out[meters[a]] = Series(ts[a:b], {f: c[a:b] for f, c in zip(fields, cols, strict=True)})
    return out


def text_or_float_columns(
    rows: Sequence[Sequence[Any]], fields: Sequence[str], text: Sequence[str]
) -> Columns:
    """Rows (ts, *fields) of one meter, oldest first → its `Columns`: the `text` fields as
    object arrays (None stays None), the others as float64 (None → NaN)."""
    if not rows:
        empty = {f: np.empty(0, dtype=object if f in text else np.float64) for f in fields}
        return Columns(np.empty(0, dtype=np.int64), empty)
    columns = list(zip(*rows, strict=True))
    if len(columns) != len(fields) + 1:
        raise ValueError(f"rows of {len(columns)} columns, expected ts + {len(fields)}")
    values: dict[str, NDArray[Any]] = {}
    for name, col in zip(fields, columns[1:], strict=True):
        if name in text:
            values[name] = np.array(col, dtype=object)
        else:
            values[name] = _floats(col)
    return Columns(np.array(columns[0], dtype=np.int64), values)
