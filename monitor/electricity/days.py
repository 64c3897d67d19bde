"""A district's readings kept per complete UTC day, so that a pass re-reads only what changed.

A pass reads each district's window of readings (`load_district`); every complete UTC day
of it is the same from one pass to the next unless readings were written to it since. So
each (district, complete day) is kept in the state as a *day summary*: the compact copy
of exactly what the telemetry store answers for that day (every meter's times and
fields; `encode_day`). A pass (`load_district_days`) reads from the telemetry store only

- the days with no summary yet (the first pass, a new day),
- the days a store marked as written since their summary (late or duplicate readings:
  `core.ports.DayMarks`, marked once the readings are readable),
- the partial last day up to `as_of` (never kept: it is not complete),

and assembles the rest from the summaries, into exactly the Series one read of the whole
window returns (same meters, times and values, in the same order), so every decision is
the one a full re-read makes. Event time holds: a complete day's readings are all before
`as_of`, the first day is cut at the window's start, the partial last day is read up to
`as_of`, whatever arrived after.

Why not per-day normal-equation terms (smaller, and no re-assembly): see
docs/metrology.md, "Incremental passes".
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import zstandard
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS
from monitor.core.ports import DaySummaries, Series, TelemetryStore
from monitor.core.schema import ELEC_READING

# Bumped when the encoding changes: a summary of another format is read again.
FORMAT = 1
_HEAD = struct.Struct("<I")


@dataclass(frozen=True)
class DayPiece:
    """Readings of one district in one span, meter after meter (sorted), each in time
    order: `counts[i]` rows of `meters[i]`; a column None when it is absent (all NaN)."""

    meters: list[str]
    counts: NDArray[np.int64]
    ts: NDArray[np.int64]
    cols: dict[str, NDArray[np.float64] | None]

    @property
    def n(self) -> int:
        return len(self.ts)


@dataclass
class DayRead:
    """What one district's load did: days from summaries, days and ranges read."""

    kept: int = 0
    read_days: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    saved: int = 0


def piece_of(series: Mapping[str, Series], fields: Sequence[str]) -> DayPiece:
    """Series per meter (as a store answers) → one piece (meters without a point left out)."""
    meters = sorted(m for m, s in series.items() if len(s.ts_ms))
    counts = np.array([len(series[m].ts_ms) for m in meters], dtype=np.int64)
    if not meters:
        return DayPiece([], counts, np.empty(0, dtype=np.int64), dict.fromkeys(fields))
    ts = np.concatenate([series[m].ts_ms for m in meters]).astype(np.int64, copy=False)
    cols: dict[str, NDArray[np.float64] | None] = {}
    for f in fields:
        col = np.concatenate([_values(series[m], f) for m in meters])
        cols[f] = None if bool(np.isnan(col).all()) else col
    return DayPiece(meters, counts, ts, cols)


def _values(s: Series, f: str) -> NDArray[np.float64]:
    col = s.values.get(f)
    return np.full(len(s.ts_ms), np.nan) if col is None else col


def split_days(piece: DayPiece, first: int, last: int) -> dict[int, DayPiece]:
    """A piece cut into its UTC days `first`..`last` (rows outside are left out)."""
    codes = np.repeat(np.arange(len(piece.meters)), piece.counts)
    day_of = piece.ts // DAY_MS
    # Stable: within a day, rows keep their order (meter after meter, each in time order).
    order = np.argsort(day_of, kind="stable")
    bounds = np.searchsorted(day_of[order], np.arange(first, last + 2))
    return {
        day: _subset(piece, codes, order[bounds[k] : bounds[k + 1]])
        for k, day in enumerate(range(first, last + 1))
    }


def _subset(piece: DayPiece, codes: NDArray[np.int64], keep: NDArray[np.int64]) -> DayPiece:
    """The rows `keep` (ascending; meters keep their order, one left without a row goes)."""
    counts = np.bincount(codes[keep], minlength=len(piece.meters)).astype(np.int64)
    present = np.flatnonzero(counts)
    cols: dict[str, NDArray[np.float64] | None] = {}
    for f, col in piece.cols.items():
        part = None if col is None else col[keep]
        cols[f] = None if part is None or bool(np.isnan(part).all()) else part
    return DayPiece([piece.meters[i] for i in present], counts[present], piece.ts[keep], cols)


def since(piece: DayPiece, start_ms: int) -> DayPiece:
    """The rows at or after `start_ms` (the window's first day, cut where it starts)."""
    if not piece.n or int(piece.ts.min()) >= start_ms:
        return piece
    codes = np.repeat(np.arange(len(piece.meters)), piece.counts)
    return _subset(piece, codes, np.flatnonzero(piece.ts >= start_ms))


def encode_day(piece: DayPiece, day: int) -> bytes:
    """One day's piece → bytes: a JSON head (format, day, fields, meters, counts), then one
    zstd frame of the times (ms into the day, as int32 steps) and of each present column
    (float64 as it is). Lossless: every bit comes back.

    zstd (level 3) rather than zlib: on meter readings (decimals) it packs as tightly and
    unpacks 3-4x faster, and unpacking is what every pass does (bench/README.md, "Day
    summaries"); shuffling the bytes of the floats made it worse on decimals.
    """
    n = piece.n
    offsets = piece.ts - day * DAY_MS
    if n and (int(offsets.min()) < 0 or int(offsets.max()) >= DAY_MS):
        raise ValueError(f"a reading outside day {day}")
    steps = np.diff(offsets, prepend=0).astype("<i4")
    present = [f for f, c in piece.cols.items() if c is not None]
    head = json.dumps(
        {
            "format": FORMAT,
            "day": day,
            "fields": list(piece.cols),
            "present": present,
            "meters": piece.meters,
            "counts": piece.counts.tolist(),
        },
        separators=(",", ":"),
    ).encode()
    parts = [steps.tobytes()]
    for f in present:
        col = piece.cols[f]
        assert col is not None
        parts.append(np.ascontiguousarray(col, dtype="<f8").tobytes())
    packed: bytes = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    return _HEAD.pack(len(head)) + head + packed


def decode_day(body: bytes, day: int, fields: Sequence[str]) -> DayPiece | None:
    """Bytes of `encode_day` → the piece, or None when they are of another format, day or
    set of fields (the day is then read again)."""
    (size,) = _HEAD.unpack_from(body)
    head = json.loads(body[_HEAD.size : _HEAD.size + size])
    if head.get("format") != FORMAT or head.get("day") != day or head.get("fields") != list(fields):
        return None
    counts = np.array(head["counts"], dtype=np.int64)
    n = int(counts.sum())
    raw = zstandard.ZstdDecompressor().decompress(body[_HEAD.size + size :])
    steps = np.frombuffer(raw, dtype="<i4", count=n)
    ts = np.cumsum(steps, dtype=np.int64) + day * DAY_MS
    cols: dict[str, NDArray[np.float64] | None] = dict.fromkeys(fields)
    offset = 4 * n
    for f in head["present"]:
        cols[f] = np.frombuffer(raw, dtype="<f8", count=n, offset=offset).astype(np.float64)
        offset += 8 * n
    return DayPiece(list(head["meters"]), counts, ts, cols)


def join_days(pieces: Sequence[DayPiece], fields: Sequence[str]) -> dict[str, Series]:
    """Consecutive pieces (in time order) → one Series per meter, as one read of their
    whole span answers: meters sorted, each meter's rows of every piece in order."""
    meters = sorted(set(itertools.chain.from_iterable(p.meters for p in pieces)))
    if not meters:
        return {}
    index = {m: i for i, m in enumerate(meters)}
    counts = np.zeros((len(pieces), len(meters)), dtype=np.int64)
    codes = [np.array([index[m] for m in p.meters], dtype=np.int64) for p in pieces]
    for k, p in enumerate(pieces):
        counts[k, codes[k]] = p.counts
    per_meter = counts.sum(axis=0)
    meter_start = np.concatenate(([0], np.cumsum(per_meter)[:-1]))
    before = np.cumsum(counts, axis=0) - counts  # a meter's rows in earlier pieces
    total = int(per_meter.sum())
    ts = np.empty(total, dtype=np.int64)
    cols = {f: np.full(total, np.nan) for f in fields}
    for k, p in enumerate(pieces):
        if not p.n:
            continue
        target = meter_start[codes[k]] + before[k, codes[k]]
        source = np.concatenate(([0], np.cumsum(p.counts)[:-1]))
        dest = np.repeat(target - source, p.counts) + np.arange(p.n)
        ts[dest] = p.ts
        for f in fields:
            col = p.cols.get(f)
            if col is not None:
                cols[f][dest] = col
    out = {}
    for i, m in enumerate(meters):
        a, b = int(meter_start[i]), int(meter_start[i] + per_meter[i])
        out[m] = Series(ts[a:b], {f: cols[f][a:b] for f in fields})
    return out


def load_district_days(
    store: TelemetryStore,
    summaries: DaySummaries,
    district: str,
    start_ms: int,
    end_ms: int,
    upto: int,
    fields: Sequence[str],
) -> tuple[dict[str, Series], DayRead]:
    """Every meter's readings of one district in [start, end], as `store.series` answers,
    from the day summaries and the telemetry store's days that changed (module doc).

    `upto` is `summaries.mark_sequence()` read before this pass read anything: the days
    read now are saved as holding every mark up to it.
    """
    stats = DayRead()
    first, last = start_ms // DAY_MS, (end_ms + 1) // DAY_MS - 1
    if start_ms < 0 or first > last:  # no complete day: one read, nothing to keep
        stats.ranges.append((start_ms, end_ms))
        read = store.series(ELEC_READING, fields, start_ms, end_ms, district=district)
        return read, stats
    stored = summaries.day_summaries(district, first, last)
    marked = summaries.marked_days(district, first, last)
    pieces: dict[int, DayPiece] = {}
    for day, body in stored.items():
        piece = None if day in marked else decode_day(body, day, fields)
        if piece is not None:
            pieces[day] = piece
    stats.kept = len(pieces)
    todo = [d for d in range(first, last + 1) if d not in pieces]
    tail = (last + 1) * DAY_MS <= end_ms  # a partial day after the last complete one
    fresh: dict[int, bytes] = {}
    tail_piece: DayPiece | None = None
    for lo_day, hi_day in _runs(todo):
        reaches_tail = tail and hi_day == last
        hi_ms = end_ms if reaches_tail else (hi_day + 1) * DAY_MS - 1
        stats.ranges.append((lo_day * DAY_MS, hi_ms))
        got = piece_of(
            store.series(ELEC_READING, fields, lo_day * DAY_MS, hi_ms, district=district), fields
        )
        days = split_days(got, lo_day, hi_day + 1 if reaches_tail else hi_day)
        for day in range(lo_day, hi_day + 1):
            pieces[day] = days[day]
            fresh[day] = encode_day(days[day], day)
        if reaches_tail:
            tail_piece = days[last + 1]
        stats.read_days += hi_day - lo_day + 1
    if tail and tail_piece is None:
        lo = (last + 1) * DAY_MS
        stats.ranges.append((lo, end_ms))
        tail_piece = piece_of(
            store.series(ELEC_READING, fields, lo, end_ms, district=district), fields
        )
    summaries.save_day_summaries(district, fresh, upto)
    stats.saved = len(fresh)
    ordered = [since(pieces[first], start_ms), *(pieces[d] for d in range(first + 1, last + 1))]
    if tail_piece is not None:
        ordered.append(tail_piece)
    return join_days(ordered, fields), stats


def _runs(days: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted day numbers → (first, last) of each run of consecutive ones."""
    out: list[tuple[int, int]] = []
    for day in days:
        if out and out[-1][1] == day - 1:
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out
