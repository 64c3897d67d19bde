"""Day blocks and column blocks: a meter's full UTC days packed as numpy arrays, what bulk
reads take instead of rows."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np

from monitor.core.clock import DAY_MS
from monitor.core.ports import (
    Columns,
    Series,
    meter_series,
)
from monitor.core.schema import Measurement


def pack_column_blocks(
    meter: str, days: list[int], rows: list[Any], numeric: list[str], text: list[str]
) -> list[tuple[object, ...]]:
    """Rows (ts, *numeric, *text) of one meter by time → one column-block row per day:
    times (int64), numbers (float64, NaN = None, point-major), and each text field as int32
    codes (point-major, -1 = None) into its distinct values over these rows (`labels`)."""
    k = len(numeric)
    columns = list(zip(*rows, strict=True)) if rows else [()] * (1 + k + len(text))
    ts = np.array(columns[0], dtype=np.int64)
    vals = np.array(columns[1 : 1 + k], dtype=np.float64).T.reshape(len(ts), k)
    labels: list[list[str]] = []
    coded: list[list[int]] = []
    for col in columns[1 + k :]:
        index: dict[str, int] = {}
        coded.append([-1 if v is None else index.setdefault(v, len(index)) for v in col])
        labels.append(list(index))
    codes = np.array(coded, dtype=np.int32).T.reshape(len(ts), len(text))
    packed = json.dumps({"numeric": numeric, "text": text, "labels": labels})
    out: list[tuple[object, ...]] = []
    for day in days:
        a, b = (int(i) for i in np.searchsorted(ts, [day * DAY_MS, (day + 1) * DAY_MS]))
        out.append(
            (
                meter,
                day,
                b - a,
                ts[a:b].tobytes(),
                np.ascontiguousarray(vals[a:b]).tobytes(),
                packed,
                np.ascontiguousarray(codes[a:b]).tobytes(),
            )
        )
    return out


def pack_day_blocks(
    meter: str,
    days: list[int],
    rows: list[Any],
    fields: list[str],
    districts: dict[int, tuple[int, int, str | None, str | None]],
) -> list[tuple[object, ...]]:
    """Rows (ts, *fields) of one meter by time, and per day (points, points with a
    district, min and max district) → one block row per day."""
    series = meter_series(rows, fields)
    ts = series.ts_ms
    # Point-major (n, fields): the blocks of a meter's days join into one array.
    block = (
        np.column_stack([series.values[f] for f in fields]) if fields else np.empty((len(ts), 0))
    )
    out: list[tuple[object, ...]] = []
    for day in days:
        a, b = (int(i) for i in np.searchsorted(ts, [day * DAY_MS, (day + 1) * DAY_MS]))
        n, named, low, high = districts.get(day, (0, 0, None, None))
        uniform = named == 0 or (named == n and low == high)
        out.append(
            (
                meter,
                day,
                low if uniform else None,
                0 if uniform else 1,
                b - a,
                ",".join(fields),
                ts[a:b].tobytes(),
                np.ascontiguousarray(block[a:b]).tobytes(),
            )
        )
    return out


def unpacked_days(run: list[Block], cols: list[str]) -> list[Series]:
    """Consecutive blocks with the same fields → one Series piece (one join, two copies)."""
    if not run:
        return []
    fields = run[0].fields
    ts = np.frombuffer(b"".join(b.ts for b in run), dtype=np.int64)
    vals = np.frombuffer(b"".join(b.vals for b in run), dtype=np.float64)
    vals = vals.reshape(len(ts), len(fields))
    return [Series(ts, {c: vals[:, fields.index(c)] for c in cols})]


def join_pieces(pieces: list[Series], cols: list[str]) -> Series:
    # Always a copy: block arrays are read-only views of the blobs.
    return Series(
        np.concatenate([p.ts_ms for p in pieces]),
        {c: np.concatenate([p.values[c] for p in pieces]) for c in cols},
    )


# Rows packed per write transaction (then the writer's lock is let go for ingest).
PACK_ROWS = 20_000


class Block(NamedTuple):
    """One stored day of one meter (see `EmbeddedStore._days`)."""

    day: int
    district: str | None
    mixed: int  # 1: the day's points are of several districts
    n: int
    fields: tuple[str, ...]
    ts: bytes  # int64 × n
    vals: bytes  # float64 × (n, fields), point-major


def block_fields(m: Measurement) -> tuple[list[str], list[str]]:
    """The numeric and the text fields of a column block, in the measurement's order."""
    return m.numeric_fields(), [f for f, t in m.fields.items() if t == "str"]


def decode_columns(blocks: list[Any], measurement: Measurement, cols: list[str]) -> Columns | None:
    """Column blocks (n, ts, vals, labels, codes) of consecutive days → one `Columns` of
    `cols`; None if a block was packed for other fields (then the rows are read)."""
    numeric, text = block_fields(measurement)
    packed = [json.loads(b[3]) for b in blocks]
    if any(p["numeric"] != numeric or p["text"] != text for p in packed):
        return None
    k, t = len(numeric), len(text)
    ts = np.frombuffer(b"".join(b[1] for b in blocks), dtype=np.int64).copy()
    vals = np.frombuffer(b"".join(b[2] for b in blocks), dtype=np.float64).reshape(len(ts), k)
    out: dict[str, Any] = {
        c: np.ascontiguousarray(vals[:, numeric.index(c)]) for c in cols if c in numeric
    }
    for j, c in enumerate(text):
        if c not in cols:
            continue
        parts = []
        for (n, _, _, _, codes), p in zip(blocks, packed, strict=True):
            if n:
                names = np.array([*p["labels"][j], None], dtype=object)
                day_codes = np.frombuffer(codes, dtype=np.int32).reshape(n, t)
                parts.append(names[day_codes[:, j]])  # code -1: the None at the end
        out[c] = np.concatenate(parts) if parts else np.empty(0, dtype=object)
    return Columns(ts, {c: out[c] for c in cols})


def absent_column(name: str, n: int, measurement: Measurement) -> Any:
    """A column of a field the table lacks: all None (text) or NaN (numeric, or unknown)."""
    if measurement.fields.get(name) == "str":
        return np.full(n, None, dtype=object)
    return np.full(n, np.nan)
