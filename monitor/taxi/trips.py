"""Taxi trips and work orders as the rules read them from stored points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.core.clock import format_ts
from monitor.core.ports import MeterPoint


@dataclass(frozen=True)
class Trip:
    """One finished trip as stored (the `trip` topic of docs/mqtt.md); times in epoch ms."""

    trip_id: str
    start_ms: int
    end_ms: int
    meter_km: float
    fare_cny: float
    tariff_version: str
    gps_km: float | None = None
    wait_s: float | None = None


@dataclass(frozen=True)
class WorkOrder:
    """An authorised intervention on a meter in [start_ms, end_ms] (POST /api/workorders)."""

    meter: str
    start_ms: int
    end_ms: int
    reason: str

    def covers(self, meter: str, ts_ms: int) -> bool:
        """Whether this work order was open on `meter` at `ts_ms` (both ends included)."""
        return meter == self.meter and self.start_ms <= ts_ms <= self.end_ms

    def overlaps(self, meter: str, start_ms: int, end_ms: int) -> bool:
        """Whether this work order was open on `meter` at some time in [start_ms, end_ms]."""
        return meter == self.meter and self.start_ms <= end_ms and start_ms <= self.end_ms

    def describe(self) -> str:
        """The work order in words, for the finding that it excused."""
        return f"work order '{self.reason}' ({format_ts(self.start_ms)} – {format_ts(self.end_ms)})"


def optional_float(value: Any) -> float | None:
    # Stores hand back absent numbers as None or NaN; neither is a measurement.
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def trip_from_point(point: MeterPoint) -> Trip | None:
    """The trip of one stored point, or None when it lacks what makes a trip."""
    values = point.values
    trip_id = values.get("trip_id")
    meter_km = optional_float(values.get("meter_km"))
    fare = optional_float(values.get("fare_cny"))
    if trip_id is None or meter_km is None or fare is None:
        return None  # ingest requires these; a point without them is not a trip
    start = optional_float(values.get("start_ts"))
    return Trip(
        trip_id=str(trip_id),
        start_ms=int(start) if start is not None else point.ts_ms,
        end_ms=point.ts_ms,
        meter_km=meter_km,
        fare_cny=fare,
        tariff_version=str(values.get("tariff_version") or ""),
        gps_km=optional_float(values.get("gps_km")),
        wait_s=optional_float(values.get("wait_s")),
    )


def trips_from_points(points: Sequence[MeterPoint]) -> list[Trip]:
    """Stored trip points → trips sorted by end time, one per trip_id (at-least-once delivery).

    `MeterPoint.ts_ms` is the trip's end. Of duplicates the earliest-ending copy is kept,
    so the answer does not depend on the order the store returns them in.
    """
    return unique_trips([t for t in (trip_from_point(p) for p in points) if t is not None])


def unique_trips(trips: list[Trip]) -> list[Trip]:
    """Trips (of `trip_from_point`, in any order) sorted by end time and trip id, the
    earliest-ending copy of each trip_id kept (`trips_from_points`). Sorts `trips`."""
    trips.sort(key=lambda t: (t.end_ms, t.trip_id))
    seen: set[str] = set()
    unique = []
    for trip in trips:
        if trip.trip_id not in seen:
            seen.add(trip.trip_id)
            unique.append(trip)
    return unique
