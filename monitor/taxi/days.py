"""A fleet's taxi telemetry kept per (bucket of meters, complete UTC day), so that a pass
re-reads only what changed: the taxi half of `electricity.days`.

A pass reads the window's trips, events and heartbeats (`taxi.evaluate.load`). Every
complete UTC day of it is the same from one pass to the next unless telemetry was written
to it since, so each (`core.ports.taxi_day_key` bucket, complete day) is kept in the state
as a *day summary* (the same `DaySummaries` tables as electricity, the key in place of the
district): the store's answer for that day, of the bucket's meters —

- every trip (`trips.trip_from_point` of each trip point the store answers: the
  window's trips are then `unique_trips` of them all, as `trips_from_points` makes them
  of every point) and every event point;
- the heartbeats that tell (`seals.telling_mask`) among the day's: the ends of every run
  of equal HEARTBEAT_FIELDS values and every broken seal.

Cutting day by day and again over the joined window keeps exactly what one cut of the
whole window keeps: a day's cut holds both heartbeats around every change of value (the
ends of its runs), so the joined cuts have the same runs, each with its first and last
heartbeat and every broken one. That holds for whole days only: a window starting inside
a day starts its first run at the first heartbeat after the start, which a day's cut
need not hold. So the partial first day, like the partial last one, is read from the
store, and a pass (`load_taxi_days`) reads from the store only

- the partial days at both ends of the window (never kept),
- the (bucket, day)s with no summary yet (the first pass, a new day), or that a store
  marked as written since their summary (`core.ports.written_days`: late or duplicate
  points), or whose summary lacks a meter the pass decides (one that joined the
  registry after its day was kept: see below),

and assembles the rest from the summaries, into exactly what `load` reads in full.

A day most buckets need (a new day) is read once for the whole fleet. A day only a few
buckets need (a late trip) is read for just their meters' heartbeats, one meter at a
time, and the day's trips and events (a few per taxi, cheap) for the whole fleet; such a
summary lists the meters whose heartbeats it holds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

import numpy as np
import zstandard

from monitor.core.clock import DAY_MS
from monitor.core.ports import (
    TAXI_DAY_BUCKETS,
    TAXI_KEY_PREFIX,
    Columns,
    DaySummaries,
    MeterPoint,
    TelemetryStore,
    taxi_day_key,
)
from monitor.core.schema import TAXI_EVENT, TAXI_STATUS, TAXI_TRIP
from monitor.taxi.seals import HEARTBEAT_FIELDS, telling_mask, telling_points
from monitor.taxi.trips import Trip, trip_from_point

# Bumped when the encoding changes: a summary of another format is read again.
FORMAT = 2
KEYS = tuple(f"{TAXI_KEY_PREFIX}{b:02d}" for b in range(TAXI_DAY_BUCKETS))
# A day more than this many buckets need is read once for the whole fleet, not per meter.
WHOLE_DAY_BUCKETS = TAXI_DAY_BUCKETS // 8
# A trip in a summary: its fields in `Trip`'s order (one list, not a dict, per trip).
_TRIP_FIELDS_OF = attrgetter(*(f.name for f in fields(Trip)))
_TEXT = frozenset(f for f in HEARTBEAT_FIELDS if TAXI_STATUS.fields.get(f) == "str")


@dataclass
class TaxiDay:
    """What one span holds of some meters: trips and event points per meter (each in
    time order) and heartbeat columns per meter. `covered`: the meters whose heartbeats
    were read (None: every meter the store had)."""

    trips: dict[str, list[Trip]] = field(default_factory=dict)
    events: dict[str, list[MeterPoint]] = field(default_factory=dict)
    beats: dict[str, Columns] = field(default_factory=dict)
    covered: list[str] | None = None


@dataclass(frozen=True)
class TaxiPoints:
    """The window's taxi telemetry as `taxi.evaluate.load` reads it, per meter: trips
    (not yet `unique_trips`), event points and telling heartbeats."""

    trips: dict[str, list[Trip]]
    events: dict[str, list[MeterPoint]]
    status: dict[str, list[MeterPoint]]


@dataclass
class TaxiRead:
    """What one load did: (bucket, day)s from summaries and read, ranges read, saved."""

    kept: int = 0
    read: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    saved: int = 0


def by_meter(points: Iterable[MeterPoint]) -> dict[str, list[MeterPoint]]:
    """Points grouped by meter (each meter's in the order given), meters sorted."""
    out: dict[str, list[MeterPoint]] = defaultdict(list)
    for p in points:
        out[p.meter].append(p)
    return {m: out[m] for m in sorted(out)}


def event_order(points: list[MeterPoint]) -> list[MeterPoint]:
    """One meter's events by (time, code): a store answers events of equal time (distinct
    codes) in no set order, and a pass must not depend on it."""
    return sorted(points, key=lambda p: (p.ts_ms, str(p.values.get("code", ""))))


def cut(status: Columns) -> Columns:
    """The heartbeats of one meter that tell (`telling_mask`), in time order."""
    ts = status.ts_ms
    if len(ts) > 1 and bool((ts[1:] < ts[:-1]).any()):
        order = np.argsort(ts, kind="stable")
        status = Columns(ts[order], {k: v[order] for k, v in status.values.items()})
    keep = np.flatnonzero(telling_mask(status))
    return Columns(status.ts_ms[keep], {k: v[keep] for k, v in status.values.items()})


def read_span(
    store: TelemetryStore, lo_ms: int, hi_ms: int, meters: Sequence[str] | None = None
) -> TaxiDay:
    """The store's taxi telemetry in [lo, hi]: every meter's trips and events, and the
    heartbeats of `meters` (None: every meter, one read), cut to those that tell."""
    if meters is None:
        status = store.columns(TAXI_STATUS, HEARTBEAT_FIELDS, lo_ms, hi_ms)
    else:
        status = {}
        for m in meters:
            status |= store.columns(TAXI_STATUS, HEARTBEAT_FIELDS, lo_ms, hi_ms, m)
    trips = {
        m: [t for t in map(trip_from_point, ps) if t is not None]
        for m, ps in by_meter(store.points(TAXI_TRIP, lo_ms, hi_ms)).items()
    }
    return TaxiDay(
        trips,
        {m: event_order(ps) for m, ps in by_meter(store.points(TAXI_EVENT, lo_ms, hi_ms)).items()},
        {m: cut(c) for m, c in sorted(status.items()) if len(c)},
        None if meters is None else sorted(meters),
    )


def split(span: TaxiDay, first: int, last: int) -> dict[tuple[str, int], TaxiDay]:
    """A span of whole days `first`..`last` → its (key, day) pieces (empty ones too)."""
    covered: dict[str, list[str] | None] = dict.fromkeys(KEYS)
    if span.covered is not None:
        covered = {k: [m for m in span.covered if taxi_day_key(m) == k] for k in KEYS}
    out = {(k, d): TaxiDay(covered=covered[k]) for k in KEYS for d in range(first, last + 1)}
    for meter, trips in span.trips.items():
        key = taxi_day_key(meter)
        if not trips:  # points without a trip: the meter is listed all the same
            out[key, first].trips.setdefault(meter, [])
        for t in trips:
            out[key, t.end_ms // DAY_MS].trips.setdefault(meter, []).append(t)
    for meter, points in span.events.items():
        key = taxi_day_key(meter)
        for p in points:
            out[key, p.ts_ms // DAY_MS].events.setdefault(meter, []).append(p)
    for meter, cols in span.beats.items():
        key = taxi_day_key(meter)
        days = cols.ts_ms // DAY_MS
        bounds = np.searchsorted(days, np.arange(first, last + 2))
        for k, day in enumerate(range(first, last + 1)):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if b > a:
                values = {f: v[a:b] for f, v in cols.values.items()}
                out[key, day].beats[meter] = Columns(cols.ts_ms[a:b], values)
    return out


def _float(x: float) -> float | None:
    return None if math.isnan(x) else x


def encode(piece: TaxiDay, day: int) -> bytes:
    """One (key, day)'s piece → bytes: one zstd frame of JSON (lossless for what stores
    answer: text, integers, floats by their shortest exact repr, None)."""
    body = {
        "format": FORMAT,
        "day": day,
        "fields": list(HEARTBEAT_FIELDS),
        "covered": piece.covered,
        "trips": {m: [_TRIP_FIELDS_OF(t) for t in ts] for m, ts in piece.trips.items()},
        "events": {m: [[p.ts_ms, p.values] for p in ps] for m, ps in piece.events.items()},
        "beats": {
            m: {
                "ts": c.ts_ms.tolist(),
                **{
                    f: (v.tolist() if f in _TEXT else [_float(x) for x in v.tolist()])
                    for f, v in c.values.items()
                },
            }
            for m, c in piece.beats.items()
        },
    }
    text = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    packed: bytes = zstandard.ZstdCompressor(level=3).compress(text)
    return packed


def decode(body: bytes, day: int) -> TaxiDay | None:
    """Bytes of `encode` → the piece, or None when of another format or day (read again)."""
    head = json.loads(zstandard.ZstdDecompressor().decompress(body))
    if (
        head.get("format") != FORMAT
        or head.get("day") != day
        or head.get("fields") != list(HEARTBEAT_FIELDS)
    ):
        return None

    def points(rows: Mapping[str, list[list[Any]]]) -> dict[str, list[MeterPoint]]:
        return {m: [MeterPoint(m, int(ts), values) for ts, values in ps] for m, ps in rows.items()}

    trips = {m: [Trip(*row) for row in rows] for m, rows in head["trips"].items()}

    beats = {}
    for m, cols in head["beats"].items():
        values: dict[str, Any] = {}
        for f in HEARTBEAT_FIELDS:
            if f in cols:
                values[f] = (
                    np.array(cols[f], dtype=object)
                    if f in _TEXT
                    else np.array([np.nan if x is None else x for x in cols[f]], dtype=np.float64)
                )
        beats[m] = Columns(np.array(cols["ts"], dtype=np.int64), values)
    return TaxiDay(trips, points(head["events"]), beats, head["covered"])


def join(pieces: Sequence[TaxiDay], meters: Sequence[str]) -> TaxiPoints:
    """Consecutive pieces (in time order) → the window's points, as `load` reads them in
    one go: each meter's points of every piece in order; heartbeats only of `meters`,
    joined and cut again (module doc: the same cut as of the whole window)."""
    trips: dict[str, list[Trip]] = defaultdict(list)
    events: dict[str, list[MeterPoint]] = defaultdict(list)
    beats: dict[str, list[Columns]] = defaultdict(list)
    wanted = set(meters)
    for piece in pieces:
        for m, ts in piece.trips.items():
            trips[m].extend(ts)
        for m, ps in piece.events.items():
            events[m].extend(ps)
        for m, c in piece.beats.items():
            if m in wanted:
                beats[m].append(c)
    status = {}
    for m in sorted(beats):
        parts = beats[m]
        joined = Columns(
            np.concatenate([c.ts_ms for c in parts]),
            {f: np.concatenate([c.values[f] for c in parts]) for f in parts[0].values},
        )
        if got := telling_points(m, joined):
            status[m] = got
    return TaxiPoints(
        {m: trips[m] for m in sorted(trips)}, {m: events[m] for m in sorted(events)}, status
    )


def load_taxi_days(
    store: TelemetryStore,
    summaries: DaySummaries,
    meters: Sequence[str],
    start_ms: int,
    as_of_ms: int,
    upto: int,
) -> tuple[TaxiPoints, TaxiRead]:
    """The window [start, as_of]'s taxi telemetry, as `taxi.evaluate.load` reads it in
    full, from the day summaries and the store's days that changed (module doc).

    `upto` is `summaries.mark_sequence()` read before this load read anything: the days
    read now are saved as holding every mark up to it.
    """
    stats = TaxiRead()
    first, last = -(-start_ms // DAY_MS), (as_of_ms + 1) // DAY_MS - 1
    if start_ms < 0 or first > last:  # no complete day: one read, nothing to keep
        stats.ranges.append((start_ms, as_of_ms))
        return join([read_span(store, start_ms, as_of_ms)], meters), stats
    bucket_meters: dict[str, set[str]] = defaultdict(set)
    for m in meters:
        bucket_meters[taxi_day_key(m)].add(m)
    pieces: dict[tuple[str, int], TaxiDay] = {}
    for key in KEYS:
        marked = summaries.marked_days(key, first, last)
        for day, body in summaries.day_summaries(key, first, last).items():
            piece = None if day in marked else decode(body, day)
            if piece is not None and (
                piece.covered is None or bucket_meters[key] <= set(piece.covered)
            ):
                pieces[key, day] = piece
    stats.kept = len(pieces)
    need: dict[int, list[str]] = defaultdict(list)
    for day in range(first, last + 1):
        for key in KEYS:
            if (key, day) not in pieces:
                need[day].append(key)
    fresh: dict[str, dict[int, bytes]] = defaultdict(dict)
    for day, keys in sorted(need.items()):
        lo, hi = day * DAY_MS, (day + 1) * DAY_MS - 1
        stats.ranges.append((lo, hi))
        only = None
        if len(keys) <= WHOLE_DAY_BUCKETS:
            only = sorted(m for k in keys for m in bucket_meters[k])
        got = split(read_span(store, lo, hi, only), day, day)
        for key in keys:
            pieces[key, day] = got[key, day]
            fresh[key][day] = encode(got[key, day], day)
        stats.read += len(keys)
    for key, bodies in fresh.items():
        summaries.save_day_summaries(key, bodies, upto)
        stats.saved += len(bodies)
    ordered: list[TaxiDay] = []
    if start_ms < first * DAY_MS:
        stats.ranges.append((start_ms, first * DAY_MS - 1))
        ordered.append(read_span(store, start_ms, first * DAY_MS - 1))
    ordered += [pieces[key, day] for day in range(first, last + 1) for key in KEYS]
    if (last + 1) * DAY_MS <= as_of_ms:
        stats.ranges.append(((last + 1) * DAY_MS, as_of_ms))
        ordered.append(read_span(store, (last + 1) * DAY_MS, as_of_ms))
    return join(ordered, meters), stats
