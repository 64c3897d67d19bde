"""Taxi fare meters (docs/metrology.md): shifts of trips, heartbeats, events and planted faults.

Trips are planned one local day at a time from (seed, taxi, day), so they do not depend
on how the simulated time is chunked. Fares are priced when a trip is published, with
the tariff the meter itself holds at the trip's end (which is how a meter that missed a
rollout keeps charging the old fare).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from monitor.simulate.registry import Lot, registry_row, start_date, taxi_lots
from monitor.simulate.spec import (
    FleetSpec,
    MeterTruth,
    Produced,
    SimMessage,
    local_day,
    local_day_start_ms,
    rfc3339,
    rng_for,
)
from monitor.taxi.tariff import Tariff, TariffBook, charged_fare_cny, fare_decimal, round_half_up

_LAYOUT_KEY = 2
_DAY_KEY = 31
_STEP_KEY = 32
HEARTBEAT_MS = 300_000
_ALWAYS = -(2**62)  # "applied since forever": tariffs a meter already held at the start


@dataclass(frozen=True)
class Trip:
    """One planned trip: true distance and what the meter and the GNSS track make of it."""

    trip_id: str
    start_ms: int
    end_ms: int
    distance_km: float
    meter_km: float
    gps_km: float
    wait_s: int
    empty_km: float


@dataclass(frozen=True)
class HeldTariff:
    """A tariff a meter holds: from when it held it, and from when it takes effect."""

    applied_ms: int
    effective_ms: int
    version: str
    tariff: Tariff


@dataclass
class TaxiMeter:
    """One taxi fare meter: static facts, planted faults and its running state."""

    index: int
    meter_id: str
    plate: str
    lot: Lot
    verified_on: date
    bias: float
    epoch_ts: bool
    night_shift: bool
    phase_ms: int
    firmware: str
    pulses_per_km: int
    inflation: float = 0.0
    pulse_injector: bool = False
    overcharge: bool = False
    stale: bool = False
    seal_break_ms: int | None = None
    faults: list[str] = field(default_factory=list)
    held: list[HeldTariff] = field(default_factory=list)
    pending: list[tuple[int, str, Tariff]] = field(default_factory=list)
    trips: deque[Trip] = field(default_factory=deque)
    planned_day: int | None = None
    n_trips: int = 0
    events: list[dict[str, object]] = field(default_factory=list)

    def tariff_at(self, ms: int) -> HeldTariff:
        """The tariff this meter applies at `ms`: newest held and effective, else its oldest."""
        usable = [h for h in self.held if h.applied_ms <= ms and h.effective_ms <= ms]
        if usable:
            return max(usable, key=lambda h: (h.effective_ms, h.version))
        return min(self.held, key=lambda h: (h.effective_ms, h.version))

    def seal_at(self, ms: int) -> str:
        """'broken' from the planted seal break on, else 'intact'."""
        return "broken" if self.seal_break_ms is not None and ms >= self.seal_break_ms else "intact"


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class TaxiFleet:
    """The taxi side of the fleet: meters, trips, heartbeats and events."""

    def __init__(self, spec: FleetSpec, book: TariffBook) -> None:
        """Lay out taxis and plant faults from the spec's seed; meters start with `book`."""
        if spec.taxis and not len(book):
            raise ValueError("taxis need at least one tariff")
        self.spec = spec
        self.tz = spec.tz
        rng = rng_for(spec.seed, _LAYOUT_KEY)
        lots = taxi_lots(spec, rng)
        today = start_date(spec)
        mean, sd = spec.taxi_bias_pct
        self.meters = [
            TaxiMeter(
                index=j,
                meter_id=f"T{j + 1:03d}",
                plate=f"沪AT{j + 1:04d}",
                lot=lots[j % len(lots)],
                verified_on=today - timedelta(days=int(rng.integers(20, 340))),
                bias=float(rng.normal(mean, sd)) / 100,
                epoch_ts=j % 2 == 1,
                night_shift=bool(rng.random() < 0.3),
                phase_ms=int(rng.integers(0, 300)) * 1000,
                firmware="2.4.1" if j % len(lots) == 0 else "1.9.7",
                pulses_per_km=1000,
            )
            for j in range(spec.taxis)
        ]
        self._plant_faults(rng)
        self._preload(book)
        self._inbox: deque[tuple[str, Tariff, int, frozenset[str] | None]] = deque()

    def _plant_faults(self, rng: np.random.Generator) -> None:
        # Each planted fault goes to a different taxi; with too few taxis the rest are left out.
        spec = self.spec
        plan = [(f"inflated_{pct:g}pct", pct) for pct in spec.taxi_inflation_pct]
        plan += [("pulse_injector", 0.0)] * spec.pulse_injectors
        plan += [("overcharge", 0.0)] * spec.overchargers
        plan += [("seal_break", 0.0)] * spec.seal_breaks
        plan += [("stale_tariff", 0.0)] * spec.stale_tariff_meters
        order = rng.permutation(len(self.meters)).tolist()
        for (name, pct), index in zip(plan, order, strict=False):
            meter = self.meters[index]
            meter.faults.append(name)
            if pct:
                meter.inflation = pct / 100
            meter.pulse_injector |= name == "pulse_injector"
            meter.overcharge |= name == "overcharge"
            meter.stale |= name == "stale_tariff"
            if name == "seal_break":
                meter.seal_break_ms = spec.start_ms + spec.seal_break_after_s * 1000

    def _preload(self, book: TariffBook) -> None:
        # Every meter holds the whole book at the start, except a stale one: it holds only
        # what was already in force then (or the oldest version) and never takes more.
        held = [HeldTariff(_ALWAYS, _epoch_ms(t.effective_from), v, t) for v, t in book.items()]
        at_start = [h for h in held if h.effective_ms <= self.spec.start_ms] or held[:1]
        for meter in self.meters:
            meter.held = list(at_start if meter.stale else held)

    # --- ground truth and registry ---------------------------------------------------------

    def registry_rows(self) -> list[dict[str, str]]:
        """Registry rows of every taxi meter."""
        return [
            registry_row(m.meter_id, "taxi", m.lot, verified_on=m.verified_on, plate=m.plate)
            for m in self.meters
        ]

    def truth(self) -> dict[str, MeterTruth]:
        """Per taxi meter: true distance error, planted faults, events and trips so far."""
        out: dict[str, MeterTruth] = {}
        for m in self.meters:
            out[m.meter_id] = {
                "kind": "taxi",
                "lot": m.lot.lot_id,
                "plate": m.plate,
                "error_pct": ((1 + m.bias) * (1 + m.inflation) - 1) * 100,
                "bias_pct": m.bias * 100,
                "inflation_pct": m.inflation * 100,
                "faults": list(m.faults),
                "seal_break_ms": m.seal_break_ms,
                "pulse_injector": m.pulse_injector,
                "overcharge": m.overcharge,
                "stale_tariff": m.stale,
                "n_trips": m.n_trips,
                "tariff_versions": [h.version for h in m.held],
                "events": [dict(e) for e in m.events],
            }
        return out

    def push_tariff(
        self, version: str, tariff: Tariff, at_ms: int, meters: Iterable[str] | None
    ) -> None:
        """Deliver a tariff command to some taxis (None: all) at `at_ms`.

        Each meter except a stale one applies it and answers `tariff_applied` a few seconds
        later, or at the next interval when that time has already been simulated. Safe to
        call from another thread (an MQTT callback) while messages are being generated.
        """
        wanted = None if meters is None else frozenset(meters)
        self._inbox.append((version, tariff, at_ms, wanted))  # deque.append is atomic

    def _take_commands(self) -> None:
        while self._inbox:
            version, tariff, at_ms, wanted = self._inbox.popleft()
            for m in self.meters:
                if (wanted is None or m.meter_id in wanted) and not m.stale:
                    m.pending.append((at_ms + (5 + m.index) * 1000, version, tariff))

    # --- one interval ------------------------------------------------------------------------

    def step(self, t0: int, t1: int, k: int, out: Produced) -> None:
        """Everything the taxis publish with event times in [t0, t1)."""
        rng = rng_for(self.spec.seed, _STEP_KEY, k)
        self._take_commands()
        for meter in self.meters:
            self._apply_pending(meter, t0, t1, out)
            self._seal_event(meter, t0, t1, out)
            self._trips(meter, t0, t1, out)
            self._heartbeats(meter, t0, t1, out)
        p = self.spec.taxi_event_rate_per_day * (t1 - t0) / 86_400_000
        for j in np.flatnonzero(rng.random(len(self.meters)) < p).tolist():
            at = t0 + int(rng.integers(0, (t1 - t0) // 1000)) * 1000
            out.reliable.append(self._event(self.meters[j], at, "power_loss", "supply lost"))

    def _topic(self, meter: TaxiMeter, channel: str) -> str:
        return f"{self.spec.topic_root}/taxi/{meter.meter_id}/{channel}"

    def _ts(self, meter: TaxiMeter, ms: int) -> int | str:
        return ms if meter.epoch_ts else rfc3339(ms, self.tz)

    def _event(self, meter: TaxiMeter, at: int, code: str, detail: str) -> SimMessage:
        meter.events.append({"ts_ms": at, "code": code, "detail": detail})
        body = {"ts": self._ts(meter, at), "code": code, "detail": detail}
        return SimMessage(at, self._topic(meter, "event"), _dumps(body))

    def _apply_pending(self, meter: TaxiMeter, t0: int, t1: int, out: Produced) -> None:
        keep = []
        for at, version, tariff in meter.pending:
            if at >= t1:
                keep.append((at, version, tariff))
                continue
            applied = max(at, t0)  # a command for a time already simulated lands now
            effective = _epoch_ms(tariff.effective_from)
            meter.held.append(HeldTariff(applied, effective, version, tariff))
            out.reliable.append(self._event(meter, applied, "tariff_applied", version))
        meter.pending = keep

    def _seal_event(self, meter: TaxiMeter, t0: int, t1: int, out: Produced) -> None:
        at = meter.seal_break_ms
        if at is not None and t0 <= at < t1:
            out.reliable.append(self._event(meter, at, "seal_broken", "fare meter seal broken"))

    def _heartbeats(self, meter: TaxiMeter, t0: int, t1: int, out: Produced) -> None:
        first = t0 + (meter.phase_ms - t0) % HEARTBEAT_MS
        # What a meter applies only moves forward in time, so equal versions at both ends
        # of the interval mean one lookup serves every heartbeat in it.
        current = meter.tariff_at(t0).version
        steady = current == meter.tariff_at(t1 - 1).version
        version = json.dumps(current)
        topic = self._topic(meter, "status")
        tail = f'"firmware":"{meter.firmware}","pulses_per_km":{meter.pulses_per_km}}}'
        for at in range(first, t1, HEARTBEAT_MS):
            ts = at if meter.epoch_ts else f'"{rfc3339(at, self.tz)}"'
            if not steady:
                version = json.dumps(meter.tariff_at(at).version)
            payload = f'{{"ts":{ts},"seal":"{meter.seal_at(at)}","tariff_version":{version},{tail}'
            out.periodic.append(SimMessage(at, topic, payload.encode()))

    def _trips(self, meter: TaxiMeter, t0: int, t1: int, out: Produced) -> None:
        tz = self.tz
        last_day = local_day(t1 - 1, tz)
        day = local_day(t0, tz) - 1 if meter.planned_day is None else meter.planned_day + 1
        for d in range(day, last_day + 1):
            meter.trips.extend(self._plan_day(meter, d))
            meter.planned_day = d
        while meter.trips and meter.trips[0].end_ms < t1:
            trip = meter.trips.popleft()
            if trip.end_ms >= t0:  # trips that ended before the simulation began are not sent
                out.reliable.append(self._trip_message(meter, trip))

    def _trip_message(self, meter: TaxiMeter, trip: Trip) -> SimMessage:
        held = meter.tariff_at(trip.end_ms)
        end = datetime.fromtimestamp(trip.end_ms // 1000, self.tz)
        fare = charged_fare_cny(held.tariff, trip.meter_km, trip.wait_s, end)
        if meter.overcharge:
            raw = fare_decimal(held.tariff, trip.meter_km, trip.wait_s, end)
            factor = 1 + self.spec.overcharge_pct / 100
            fare = round_half_up(float(raw) * factor, held.tariff.charge_step)
        meter.n_trips += 1
        body = {
            "trip_id": trip.trip_id,
            "start_ts": self._ts(meter, trip.start_ms),
            "end_ts": self._ts(meter, trip.end_ms),
            "meter_km": trip.meter_km,
            "fare_cny": fare,
            "tariff_version": held.version,
            "gps_km": trip.gps_km,
            "wait_s": trip.wait_s,
            "empty_km": trip.empty_km,
        }
        return SimMessage(trip.end_ms, self._topic(meter, "trip"), _dumps(body))

    def _plan_day(self, meter: TaxiMeter, day: int) -> list[Trip]:
        # A shift of 15-25 trips with cruising in between and a meal break half way;
        # 30 % of the drivers work evenings into the night (so night fares occur).
        spec = self.spec
        rng = rng_for(spec.seed, _DAY_KEY, meter.index, day)
        midnight = local_day_start_ms(day, self.tz)
        start_h = rng.uniform(16.0, 19.0) if meter.night_shift else rng.uniform(5.5, 9.0)
        meal_s = int(rng.uniform(20.0, 60.0) * 60)
        n = int(rng.integers(15, 26))
        draws = self._draw_trips(meter, rng, n)
        label = f"{meter.meter_id}-{datetime.fromtimestamp(midnight // 1000, self.tz):%Y%m%d}"
        trips, t = [], midnight + int(start_h * 3600) * 1000
        for j, (empty, cruise_s, distance, registered, gps, wait, moving_s, pause_s) in enumerate(
            zip(*draws, strict=True)
        ):
            t += (cruise_s + (meal_s if j == n // 2 else 0)) * 1000
            end = t + (moving_s + wait) * 1000
            trips.append(
                Trip(f"{label}-{j + 1:02d}", t, end, distance, registered, gps, wait, empty)
            )
            t = end + pause_s * 1000
        return trips

    def _draw_trips(
        self, meter: TaxiMeter, rng: np.random.Generator, n: int
    ) -> tuple[list[Any], ...]:
        """Per-trip columns: empty km, cruise s, true km, meter km, GNSS km, wait s, moving s, pause s."""
        spec = self.spec
        empty = rng.lognormal(math.log(1.8), 0.7, n)
        cruise_s = (empty / rng.uniform(15.0, 30.0, n) * 3600).astype(np.int64)
        distance = np.clip(rng.lognormal(math.log(7.0), 0.65, n), 0.5, 80.0)
        wait_s = np.clip(rng.lognormal(math.log(150.0), 0.9, n), 0.0, 2400.0).astype(np.int64)
        moving_s = (distance / rng.uniform(18.0, 40.0, n) * 3600).astype(np.int64)
        # Urban GNSS distance error: a bias shared by the fleet plus per-trip scatter,
        # within the −0.4 … +5.5 % seen in practice (Kang et al. 2020).
        gnss = np.clip(spec.gnss_bias_pct / 100 + rng.normal(0.0, 0.012, n), -0.004, 0.055)
        injected = (rng.random(n) < spec.pulse_share) & meter.pulse_injector
        registered = distance * (1 + meter.bias) * (1 + meter.inflation)
        registered *= np.where(injected, spec.pulse_factor, 1.0)
        pause_s = rng.integers(30, 180, n)
        return (
            np.round(empty, 2).tolist(),
            cruise_s.tolist(),
            distance.tolist(),
            np.round(registered, 2).tolist(),
            np.round(distance * (1 + gnss), 2).tolist(),
            wait_s.tolist(),
            moving_s.tolist(),
            pause_s.tolist(),
        )


def _dumps(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
