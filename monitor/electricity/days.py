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
import math
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zstandard
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS
from monitor.core.ports import DaySummaries, Series, TelemetryStore
from monitor.core.schema import ELEC_READING

# Bumped when the encoding changes: a summary of another format is read again.
FORMAT = 2
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
    """One day's piece → bytes: a JSON head (format, day, fields, meters, counts, how each
    column is kept), then one zstd frame of the columns. Lossless: every bit comes back.

    A column is kept as integers wherever that is exact: the times as milliseconds into
    the day in units of their greatest common divisor (900 000 on a 15-minute grid), a
    field as decimals k / 10**s with the smallest s that gives back every bit (meters
    report decimals; the few rows that are not, NaN, -0.0, ±inf, more decimals, kept
    beside as float64), else as float64. Integers are kept as each meter's first value and the steps from row to row,
    in the narrowest of int8-int64 that holds them: ~10 bytes a reading before zstd
    instead of 44, half the summary after it, and a pass decodes a whole window's
    integers at once (`_Rows`) instead of day by day.

    zstd (level 3) rather than zlib: on meter readings it packs as tightly and unpacks
    3-4x faster, and unpacking is what every pass does (bench/README.md, "Day summaries").
    """
    n = piece.n
    offsets = piece.ts - day * DAY_MS
    if n and (int(offsets.min()) < 0 or int(offsets.max()) >= DAY_MS):
        raise ValueError(f"a reading outside day {day}")
    starts = _starts(piece.counts)
    # A unit that divides a day too: a pass adds the day's start in units (`_Rows.times`).
    unit = math.gcd(int(np.gcd.reduce(offsets)) if n else 0, DAY_MS)
    width, parts = _ints(offsets // unit, starts)
    cols: dict[str, list[int | str] | str | None] = {}
    for f, col in piece.cols.items():
        decimal = None if col is None else _decimal(col)
        if col is None:
            cols[f] = None
        elif decimal is None:
            cols[f] = "f8"
            parts.append(np.ascontiguousarray(col, dtype="<f8").tobytes())
        else:
            scale, ints, odd = decimal
            steps, more = _ints(ints, starts)
            cols[f] = [scale, steps, len(odd)]
            parts += [*more, odd.astype("<i4").tobytes(), col[odd].astype("<f8").tobytes()]
    head = json.dumps(
        {
            "format": FORMAT,
            "day": day,
            "fields": list(piece.cols),
            "meters": piece.meters,
            "counts": piece.counts.tolist(),
            "times": [unit, width],
            "cols": cols,
        },
        separators=(",", ":"),
    ).encode()
    packed: bytes = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    return _HEAD.pack(len(head)) + head + packed


# The largest decimal exponent tried; the integers a float64 holds exactly.
_MAX_SCALE = 9
_EXACT = 2.0**53
_WIDTHS = ("<i1", "<i2", "<i4", "<i8")


def _starts(counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """The first row of each meter's run."""
    return (np.cumsum(counts) - counts).astype(np.int64)


def _ints(values: NDArray[np.int64], starts: NDArray[np.int64]) -> tuple[str, list[bytes]]:
    """Integers → (width of the steps, [every meter's first value as int64, the steps
    from row to row, 0 at each meter's first row])."""
    n = len(values)
    steps = np.diff(values, prepend=values[:1])
    steps[starts[starts < n]] = 0
    top = int(np.abs(steps).max()) if n else 0
    width = next(w for w in _WIDTHS if top <= np.iinfo(w).max)
    firsts = values[np.minimum(starts, n - 1)] if n else np.zeros(len(starts), dtype=np.int64)
    return width, [firsts.astype("<i8").tobytes(), steps.astype(width).tobytes()]


def _decimal(col: NDArray[np.float64]) -> tuple[int, NDArray[np.int64], NDArray[np.int64]] | None:
    """(s, integers k, odd rows) such that k / 10**s is `col` bit for bit but in the odd
    rows (NaN, -0.0, ±inf, more decimals: kept as they are), for the smallest s that
    leaves at most 1/64 of the rows (and one) odd; None when none does (kept as float64)."""
    n = len(col)
    bits = col.view(np.int64)
    sample = slice(0, 64)  # a few rows first: a column of no short decimals fails there
    for scale in range(_MAX_SCALE + 1):
        ten = 10.0**scale
        for rows in (sample, slice(None)):
            part = col[rows]
            with np.errstate(invalid="ignore", over="ignore"):
                fits = np.abs(part) * ten < _EXACT  # False for NaN and ±inf too
            k = np.rint(np.where(fits, part, 0.0) * ten).astype(np.int64)
            odd = ~fits | ((k / ten).view(np.int64) != bits[rows])
            if int(odd.sum()) > len(part) // 64 + 1:
                break
        else:
            odd_rows = np.flatnonzero(odd)
            if len(odd_rows):  # an odd row takes the value before it: steps stay small
                k = k[np.maximum.accumulate(np.where(odd, 0, np.arange(n)))]
            return scale, k, odd_rows
    return None


@dataclass(frozen=True)
class _Ints:
    """A column kept as integers: every meter's first value, the steps, odd rows."""

    firsts: NDArray[np.int64]
    steps: NDArray[Any]
    scale: int  # times: their unit (ms); a field: the decimal exponent
    odd: NDArray[Any]  # rows kept as float64 (`_decimal`), and their values
    odd_values: NDArray[Any]


@dataclass(frozen=True)
class _Coded:
    """A day summary unpacked, its columns still as kept: a pass decodes them together
    with the other days of its window (`_Rows`)."""

    day: int
    meters: list[str]
    counts: NDArray[np.int64]
    ts: _Ints
    cols: dict[str, _Ints | NDArray[np.float64] | None]

    @property
    def n(self) -> int:
        return len(self.ts.steps)


def _unpack(
    body: bytes, day: int, fields: Sequence[str], unzstd: zstandard.ZstdDecompressor
) -> _Coded | None:
    """Bytes of `encode_day` → its columns as kept, or None when they are of another
    format, day or set of fields (the day is then read again)."""
    (size,) = _HEAD.unpack_from(body)
    head = json.loads(body[_HEAD.size : _HEAD.size + size])
    if head.get("format") != FORMAT or head.get("day") != day or head.get("fields") != list(fields):
        return None
    counts = np.array(head["counts"], dtype=np.int64)
    m, n = len(counts), int(counts.sum())
    raw = unzstd.decompress(body[_HEAD.size + size :])
    at = 0

    def take(dtype: str, count: int) -> NDArray[Any]:
        nonlocal at
        out = np.frombuffer(raw, dtype=dtype, count=count, offset=at)
        at += out.nbytes
        return out

    def ints(scale: int, width: str, odd: int) -> _Ints:
        return _Ints(take("<i8", m), take(width, n), scale, take("<i4", odd), take("<f8", odd))

    unit, width = head["times"]
    ts = ints(unit, width, 0)
    cols: dict[str, _Ints | NDArray[np.float64] | None] = {}
    for f in fields:
        how = head["cols"][f]
        cols[f] = None if how is None else take("<f8", n) if how == "f8" else ints(*how)
    return _Coded(day, list(head["meters"]), counts, ts, cols)


def decode_day(body: bytes, day: int, fields: Sequence[str]) -> DayPiece | None:
    """Bytes of `encode_day` → the piece, or None when they are of another format, day or
    set of fields (the day is then read again)."""
    coded = _unpack(body, day, fields, zstandard.ZstdDecompressor())
    return None if coded is None else _piece(coded, fields)


def _piece(coded: _Coded, fields: Sequence[str]) -> DayPiece:
    """A day summary as kept → its piece (one piece: its rows are already meter after
    meter, each meter's in time order)."""
    rows = _Rows.of([coded])
    kept = {f: None if coded.cols[f] is None else rows.field([coded], f) for f in fields}
    return DayPiece(coded.meters, coded.counts, rows.times([coded]), kept)


def join_days(pieces: Sequence[DayPiece], fields: Sequence[str]) -> dict[str, Series]:
    """Consecutive pieces (in time order) → one Series per meter, as one read of their
    whole span answers: meters sorted, each meter's rows of every piece in order."""
    return _join(pieces, fields)


def _join(parts: Sequence[DayPiece | _Coded], fields: Sequence[str]) -> dict[str, Series]:
    """`join_days` of pieces and day summaries still as kept (`_unpack`)."""
    rows = _Rows.of(parts)
    if not rows.meters:
        return {}
    ts = rows.times(parts)
    cols = {f: rows.field(parts, f) for f in fields}
    out = {}
    for i, m in enumerate(rows.meters):
        a, b = int(rows.meter_start[i]), int(rows.meter_start[i] + rows.per_meter[i])
        out[m] = Series(ts[a:b], {f: cols[f][a:b] for f in fields})
    return out


@dataclass(frozen=True)
class _Rows:
    """Where the rows of consecutive pieces go in the joined window, meter after meter.

    A piece's rows come as blocks, one per meter (in the piece's order: meter after
    meter); the window puts each meter's blocks of every piece one after another. The
    columns kept as integers are decoded for the whole window at once: their steps,
    gathered into the window's order (`source`), summed up once (each block starting
    from its first value) and scaled once, a few numpy operations over every row instead
    of a few per day and column (at 60 days × 6 columns those were most of a pass). The
    rest (a piece read from the store, a column kept as float64, NaN rows, a day of
    another scale) is then written into its rows."""

    meters: list[str]
    per_meter: NDArray[np.int64]  # rows of each meter in the window
    meter_start: NDArray[np.int64]
    counts: NDArray[np.int64]  # rows of each block, blocks piece after piece
    target: NDArray[np.int64]  # each block's first row in the window
    order: NDArray[np.int64]  # blocks in the window's order (with rows only)
    source: NDArray[np.int64]  # for each row of the window, its row among the pieces'
    begin: list[int]  # each piece's first row and first block among the pieces'
    first_block: list[int]

    @classmethod
    def of(cls, parts: Sequence[DayPiece | _Coded]) -> _Rows:
        meters = sorted(set(itertools.chain.from_iterable(p.meters for p in parts)))
        index = {m: i for i, m in enumerate(meters)}
        codes: list[NDArray[np.int64]] = []
        for p in parts:  # most days list the same meters as the day before
            same = bool(codes) and p.meters == parts[len(codes) - 1].meters
            codes.append(codes[-1] if same else np.array([index[m] for m in p.meters], np.int64))
        table = np.zeros((len(parts), len(meters)), dtype=np.int64)  # rows of meter in piece
        for k, p in enumerate(parts):
            table[k, codes[k]] = p.counts
        per_meter = table.sum(axis=0)
        meter_start = np.cumsum(per_meter) - per_meter
        before = np.cumsum(table, axis=0) - table  # a meter's rows in earlier pieces
        code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
        piece = np.repeat(np.arange(len(parts)), [len(c) for c in codes])
        counts = table[piece, code]
        target = meter_start[code] + before[piece, code]
        begins = np.cumsum(counts) - counts  # each block's first row among the pieces'
        order = np.argsort(target, kind="stable")
        order = order[counts[order] > 0]
        # source = 0, 1, 2, … within a block; at a block's first row, the jump from the
        # last row of the block before it: one cumulative sum.
        total = int(per_meter.sum())
        jump = np.ones(total, dtype=np.int64)
        first, size = begins[order], counts[order]
        if len(order):
            jump[target[order]] = first - np.concatenate(([0], first[:-1] + size[:-1] - 1))
        sizes = [p.n for p in parts]
        blocks = [len(c) for c in codes]
        return cls(
            meters,
            per_meter,
            meter_start,
            counts,
            target,
            order,
            np.cumsum(jump),
            (np.cumsum(sizes) - sizes).tolist() if sizes else [],
            (np.cumsum(blocks) - blocks).tolist() if blocks else [],
        )

    def rows_of(
        self, k: int, part: DayPiece | _Coded, rows: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        """Where rows of piece `k` (numbered within it) are in the window."""
        a = self.first_block[k]
        counts = self.counts[a : a + len(part.counts)]
        offset = np.repeat(
            self.target[a : a + len(part.counts)] - (np.cumsum(counts) - counts), counts
        )
        return offset[rows] + rows

    def integers(
        self, ints: Sequence[_Ints | None], parts: Sequence[DayPiece | _Coded], base: Sequence[int]
    ) -> NDArray[np.int64]:
        """The integers of every row of the window (0 in the rows of a piece not kept as
        integers), each block's first value raised by its piece's `base`: every block's
        first value plus the steps since, by one cumulative sum over the window (int64
        wraps around and the differences wrap back: exact whatever the sums)."""
        steps = np.concatenate(
            [
                np.zeros(p.n, np.int8) if i is None else i.steps
                for i, p in zip(ints, parts, strict=True)
            ],
            dtype=np.int64,
            casting="same_kind",
        )[self.source]
        if not len(steps):
            return steps
        firsts = np.concatenate(
            [
                np.zeros(len(p.counts), np.int64) if i is None else i.firsts + b
                for i, p, b in zip(ints, parts, base, strict=True)
            ]
        )[self.order]
        at = self.target[self.order]
        # A block's step at its first row is 0: the sums over blocks are what it adds.
        added = np.add.reduceat(steps, at)
        steps[at] = firsts - np.concatenate(([0], firsts[:-1] + added[:-1]))
        return np.cumsum(steps, out=steps)

    def times(self, parts: Sequence[DayPiece | _Coded]) -> NDArray[np.int64]:
        """ms of every row of the window."""
        ints = [p.ts if isinstance(p, _Coded) else None for p in parts]
        units = Counter(i.scale for i in ints if i is not None)
        unit = units.most_common(1)[0][0] if units else 1
        # A unit divides a day (`encode_day`): the day's start is added to first values.
        base = [
            p.day * (DAY_MS // i.scale) if isinstance(p, _Coded) and i else 0
            for p, i in zip(parts, ints, strict=True)
        ]
        k = self.integers(ints, parts, base)
        out = k * unit
        for n, (p, i) in enumerate(zip(parts, ints, strict=True)):
            if i is not None and i.scale == unit:
                continue
            at = self.rows_of(n, p, np.arange(p.n))
            if isinstance(p, DayPiece):
                out[at] = p.ts
            elif i is not None:
                out[at] = k[at] * i.scale
        return out

    def field(self, parts: Sequence[DayPiece | _Coded], f: str) -> NDArray[np.float64]:
        """Values of field `f` in every row of the window (NaN where it is absent)."""
        kept = [p.cols.get(f) for p in parts]
        ints = [i if isinstance(i, _Ints) else None for i in kept]
        scales = Counter(i.scale for i in ints if i is not None)
        out = np.empty(int(self.per_meter.sum()))
        scale = scales.most_common(1)[0][0] if scales else None
        k = self.integers(ints, parts, [0] * len(parts)) if scales else np.zeros(0, np.int64)
        if scale is not None:
            np.divide(k, 10.0**scale, out=out)  # k / 10**s: exact, as `_decimal` checked
        for n, (p, i, got) in enumerate(zip(parts, ints, kept, strict=True)):
            if i is not None and i.scale == scale and not len(i.odd):
                continue
            at = self.rows_of(n, p, np.arange(p.n))
            if i is not None:
                if i.scale != scale:
                    out[at] = k[at] / 10.0**i.scale
                out[at[i.odd]] = i.odd_values
            elif isinstance(got, np.ndarray):
                out[at] = got
            else:
                out[at] = np.nan
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
    pieces: dict[int, DayPiece | _Coded] = {}
    unzstd = zstandard.ZstdDecompressor()
    for day, body in stored.items():
        coded = None if day in marked else _unpack(body, day, fields, unzstd)
        if coded is not None:
            pieces[day] = coded
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
    head = pieces[first]
    if start_ms > first * DAY_MS:  # the window starts within its first day
        head = since(_piece(head, fields) if isinstance(head, _Coded) else head, start_ms)
    ordered = [head, *(pieces[d] for d in range(first + 1, last + 1))]
    if tail_piece is not None:
        ordered.append(tail_piece)
    return _join(ordered, fields), stats


def _runs(days: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted day numbers → (first, last) of each run of consecutive ones."""
    out: list[tuple[int, int]] = []
    for day in days:
        if out and out[-1][1] == day - 1:
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out
