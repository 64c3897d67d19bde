"""Electricity: household loads, transformer areas and their meters (docs/metrology.md).

The physics is a pure function of (seed, interval): `ElecModel.energy(k)` gives every
household's true energy and every master meter's true input for interval k, so ground
truth can be recomputed for any interval. `ElecFleet` holds the registers and turns each
interval into readings and events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from monitor.simulate.registry import Lot, customer_lots, master_lot, registry_row
from monitor.simulate.spec import (
    DAY_S,
    FleetSpec,
    MeterTruth,
    Produced,
    SimMessage,
    rng_for,
    ts_json,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_LAYOUT_KEY = 1
_DAY_KEY = 11
_NOISE_KEY = 12
_EVENT_KEY = 14
_BENIGN_EVENTS = ("power_down", "overvoltage", "undervoltage", "clock_battery_low")
_DETAILS = {
    "cover_open": "meter cover opened",
    "clock_battery_low": "clock battery voltage low",
    "power_down": "supply interrupted",
    "overvoltage": "phase voltage above 242 V",
    "undervoltage": "phase voltage below 198 V",
}
_DAY_FACTOR_SD = 0.15
_SQRT_2PI = math.sqrt(2 * math.pi)


def _bump(hour: float, centre: FloatArray, width: FloatArray) -> FloatArray:
    """A daily Gaussian peak in hours, measured around the clock so 23:30 is near 00:30."""
    distance = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (distance / width) ** 2)


@dataclass(frozen=True)
class Households:
    """Per-household daily load shapes (kW); every household differs, so β is identifiable."""

    base_kw: FloatArray
    morning_kw: FloatArray
    morning_h: FloatArray
    morning_w: FloatArray
    evening_kw: FloatArray
    evening_h: FloatArray
    evening_w: FloatArray
    midday_kw: FloatArray
    weekend_shift_h: FloatArray
    noise_sd: FloatArray
    spike_p: FloatArray

    @classmethod
    def draw(cls, rng: np.random.Generator, vacant: BoolArray) -> Households:
        """Random shapes; vacant dwellings keep only a tiny standby load."""
        n = len(vacant)
        live = ~vacant

        def peak(low: float, high: float) -> FloatArray:
            return rng.uniform(low, high, n) * live

        return cls(
            base_kw=np.where(
                vacant, rng.lognormal(math.log(0.01), 0.3, n), rng.lognormal(math.log(0.12), 0.4, n)
            ),
            morning_kw=peak(0.2, 1.2),
            morning_h=rng.uniform(6.0, 8.5, n),
            morning_w=rng.uniform(0.6, 1.4, n),
            evening_kw=peak(0.6, 2.2),
            evening_h=rng.uniform(18.0, 21.5, n),
            evening_w=rng.uniform(1.0, 2.2, n),
            midday_kw=peak(0.0, 0.8) * (rng.random(n) < 0.4),
            weekend_shift_h=rng.uniform(0.5, 2.0, n),
            noise_sd=np.where(vacant, 0.1, rng.uniform(0.15, 0.35, n)),
            spike_p=np.where(vacant, 0.0, rng.uniform(0.01, 0.05, n)),
        )

    def mean_kw(self) -> FloatArray:
        """Approximate 24-hour mean power of each household (for sizing line losses)."""
        bumps = (
            self.morning_kw * self.morning_w
            + self.evening_kw * self.evening_w
            + self.midday_kw * 1.5
        )
        return self.base_kw + bumps * _SQRT_2PI / 24.0 + self.spike_p * 0.9

    def shape_kw(self, hour: float, weekend: bool) -> FloatArray:
        """Expected power at a local hour of day, before day-to-day and interval noise."""
        shift = self.weekend_shift_h if weekend else 0.0
        midday = self.midday_kw * 2.0 + 0.2 * (self.morning_kw > 0) if weekend else self.midday_kw
        return (
            self.base_kw
            + self.morning_kw * _bump(hour, self.morning_h + shift, self.morning_w)
            + self.evening_kw * _bump(hour, self.evening_h, self.evening_w)
            + midday
            * _bump(hour, np.full_like(self.base_kw, 13.0), np.full_like(self.base_kw, 1.5))
        )


@dataclass
class ElecModel:
    """True energies of every household and master-meter input, per interval."""

    spec: FleetSpec
    households: Households
    district_of: IntArray
    fixed_loss_kw: FloatArray
    gamma_per_kw: FloatArray
    _day_cache: dict[int, FloatArray] = field(default_factory=dict)

    @property
    def hours(self) -> float:
        """Interval length Δt in hours."""
        return self.spec.interval_s / 3600.0

    def _day_factor(self, day: int) -> FloatArray:
        # One multiplier per household per day: some days everyone is out, some days in.
        cached = self._day_cache.get(day)
        if cached is None:
            n = len(self.district_of)
            sd = _DAY_FACTOR_SD
            cached = rng_for(self.spec.seed, _DAY_KEY, day).lognormal(-0.5 * sd * sd, sd, n)
            if len(self._day_cache) > 8:
                self._day_cache.clear()
            self._day_cache[day] = cached
        return cached

    def energy(self, k: int) -> tuple[FloatArray, FloatArray]:
        """(household kWh, master input kWh per district) over interval k (from k·Δt)."""
        offset_s = self.spec.utc_offset_minutes * 60
        mid_s = k * self.spec.interval_s + self.spec.interval_s // 2 + offset_s
        day, hour = mid_s // DAY_S, (mid_s % DAY_S) / 3600.0
        weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        hh = self.households
        rng = rng_for(self.spec.seed, _NOISE_KEY, k)
        n = len(self.district_of)
        noise = rng.lognormal(-0.5 * hh.noise_sd**2, hh.noise_sd, n)
        spikes = (rng.random(n) < hh.spike_p) * rng.uniform(0.3, 1.5, n)
        power = hh.shape_kw(hour, weekend) * self._day_factor(day) * noise + spikes
        x = power * self.hours
        return x, self.master_input(x)

    def master_input(self, x: FloatArray) -> FloatArray:
        """What enters each area: Σx + L_fix·Δt + the I²R loss of `spec.line_loss_model`."""
        total = np.bincount(self.district_of, weights=x, minlength=len(self.fixed_loss_kw))
        return master_input(
            total.astype(np.float64),
            self.fixed_loss_kw,
            self.gamma_per_kw,
            self.hours,
            self.spec.line_loss_model,
        )


def master_input(
    total_kwh: FloatArray,
    fixed_kw: FloatArray | float,
    gamma_per_kw: FloatArray | float,
    hours: float,
    model: str,
) -> FloatArray:
    """Energy into an area for customer consumption `total_kwh` over intervals of `hours`.

    "customer": Σx + L_fix·Δt + γ·(Σx)²/Δt. "trunk": y0 = Σx + L_fix·Δt + γ·y0²/Δt, the
    smaller root of that quadratic, so the loss also grows with the current the losses
    themselves draw (loss-on-loss ≈ 2·γ²·X³/Δt², which the customer form leaves out).
    """
    fed = total_kwh + np.asarray(fixed_kw) * hours
    if model == "customer":
        out: FloatArray = fed + np.asarray(gamma_per_kw) * total_kwh**2 / hours
        return out
    g = np.asarray(gamma_per_kw) / hours
    # (1 − √(1 − 4gF)) / 2g written as 2F / (1 + √(1 − 4gF)): no cancellation for small g.
    root: FloatArray = 2.0 * fed / (1.0 + np.sqrt(np.maximum(1.0 - 4.0 * g * fed, 0.0)))
    return root


@dataclass
class ElecMeter:
    """One electricity meter (customer or master): its facts, planted faults and event log."""

    meter_id: str
    district: str
    role: str
    lot: Lot
    installed_on: date
    error: float
    epoch_ts: bool
    clock_offset_s: float
    clock_drift_s_per_day: float
    vacant: bool = False
    faults: list[str] = field(default_factory=list)
    fault_ms: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, object]] = field(default_factory=list)


def _district_ids(spec: FleetSpec) -> list[str]:
    return [f"D{d + 1:02d}" for d in range(spec.districts)]


def _pick_disjoint(
    rng: np.random.Generator, candidates: IntArray, counts: list[int]
) -> list[IntArray]:
    """Disjoint random picks from candidates; a pick shrinks when candidates run out."""
    order = rng.permutation(candidates)
    picks, used = [], 0
    for count in counts:
        picks.append(order[used : used + count])
        used += count
    return picks


class ElecFleet:
    """The electricity side of the fleet: meters, registers, readings and events."""

    def __init__(self, spec: FleetSpec) -> None:
        """Lay out districts, households and meters from the spec's seed."""
        self.spec = spec
        rng = rng_for(spec.seed, _LAYOUT_KEY)
        self.district_ids = _district_ids(spec)
        low, high = spec.meters_per_district
        sizes = rng.integers(low, high + 1, spec.districts) if spec.districts else np.zeros(0, int)
        district_of = np.repeat(np.arange(spec.districts), sizes).astype(np.int64)
        n = len(district_of)
        vacant = rng.random(n) < spec.vacant_share
        errors, beyond = self._draw_errors(rng, vacant)
        self.model = self._draw_model(rng, Households.draw(rng, vacant), district_of)
        self.customers = self._draw_customers(rng, district_of, errors, vacant)
        for i in np.flatnonzero(beyond).tolist():
            self.customers[i].faults.append("beyond_limit")
        self.masters = self._draw_masters(rng)
        self._plant_faults(rng, vacant | beyond)
        self._init_state(rng)

    def _draw_customers(
        self, rng: np.random.Generator, district_of: IntArray, errors: FloatArray, vacant: BoolArray
    ) -> list[ElecMeter]:
        # Lots mix across districts, as deliveries do; ts formats alternate between meters.
        lots, weights = customer_lots(self.spec, rng)
        lot_of = rng.choice(len(lots), size=len(district_of), p=np.asarray(weights)).tolist()
        customers = []
        for i, d in enumerate(district_of.tolist()):
            lot = lots[lot_of[i]]
            customers.append(
                ElecMeter(
                    meter_id=f"E{d + 1:02d}-{i + 1:04d}",
                    district=self.district_ids[d],
                    role="customer",
                    lot=lot,
                    installed_on=lot.installed_on + timedelta(days=int(rng.integers(0, 61))),
                    error=float(errors[i]),
                    epoch_ts=i % 2 == 1,
                    clock_offset_s=float(rng.uniform(-20, 20)),
                    clock_drift_s_per_day=float(rng.uniform(-1, 1)),
                    vacant=bool(vacant[i]),
                )
            )
        return customers

    def _draw_errors(
        self, rng: np.random.Generator, vacant: BoolArray
    ) -> tuple[FloatArray, BoolArray]:
        # Clean meters stay well inside the class-2 in-service limit (±3.5 %); the planted
        # ones are clearly beyond it, so a correct estimator has an unambiguous answer.
        spec, n = self.spec, len(vacant)
        sd = spec.clean_error_sd_pct / 100
        clean = np.clip(rng.normal(0.0, sd, n), -3 * sd, 3 * sd)
        low, high = spec.beyond_limit_error_pct
        bad = rng.uniform(low, high, n) / 100 * rng.choice([-1.0, 1.0], n)
        beyond = (rng.random(n) < spec.beyond_limit_share) & ~vacant
        return np.where(beyond, bad, clean), beyond

    def _draw_model(
        self, rng: np.random.Generator, households: Households, district_of: IntArray
    ) -> ElecModel:
        # Line loss of a few percent: a fixed part (no-load, leakage) and an I²R part whose
        # coefficient makes it 1-2 % at the mean load (more in the evening peak).
        d = self.spec.districts
        mean_kw = np.bincount(district_of, weights=households.mean_kw(), minlength=d)
        fixed = rng.uniform(0.005, 0.015, d) * mean_kw
        gamma = rng.uniform(0.01, 0.02, d) / np.maximum(mean_kw, 1e-9)
        return ElecModel(self.spec, households, district_of, fixed, gamma)

    def _draw_masters(self, rng: np.random.Generator) -> list[ElecMeter]:
        lot = master_lot(self.spec, rng)
        sd = self.spec.master_error_sd_pct / 100
        return [
            ElecMeter(
                meter_id=f"M{d + 1:02d}",
                district=district,
                role="master",
                lot=lot,
                installed_on=lot.installed_on,
                error=float(rng.normal(0, sd)),
                epoch_ts=False,
                clock_offset_s=float(rng.uniform(-5, 5)),
                clock_drift_s_per_day=float(rng.uniform(-0.2, 0.2)),
            )
            for d, district in enumerate(self.district_ids)
        ]

    def _plant_faults(self, rng: np.random.Generator, taken: BoolArray) -> None:
        spec = self.spec
        free = np.flatnonzero(~taken).astype(np.int64)
        plans = (
            ("tamper", spec.tamper_meters, spec.tamper_after_s),
            ("stopped", spec.stopped_meters, spec.stopped_after_s),
            ("clock", spec.clock_fault_meters, spec.clock_fault_after_s),
        )
        picks = _pick_disjoint(rng, free, [count for _, count, _ in plans])
        for (name, _, after_s), chosen in zip(plans, picks, strict=True):
            for i in chosen.tolist():
                self.customers[i].faults.append(name)
                self.customers[i].fault_ms[name] = spec.start_ms + after_s * 1000

    def _init_state(self, rng: np.random.Generator) -> None:
        # Registers keep the true cumulative (1+e)·x; the reading is its floor to the
        # resolution, so rounding never invents or loses energy over time.
        spec, meters = self.spec, self.meters()
        self.tz = spec.tz
        self.cum = np.concatenate(
            [
                rng.uniform(2_000, 30_000, len(self.customers)),
                rng.uniform(200_000, 2_000_000, len(self.masters)),
            ]
        )
        self.factor = 1.0 + np.array([m.error for m in meters])
        never = np.iinfo(np.int64).max
        self.stopped_from = np.array([m.fault_ms.get("stopped", never) for m in meters], np.int64)
        self.clock_fault_from = np.array([m.fault_ms.get("clock", never) for m in meters], np.int64)
        self.clock_offset = np.array([m.clock_offset_s for m in meters])
        self.clock_drift = np.array([m.clock_drift_s_per_day for m in meters])
        self.topics = [f"{spec.topic_root}/elec/{m.district}/{m.meter_id}/reading" for m in meters]
        self.epoch_ts = [m.epoch_ts for m in meters]
        self.seq = 0
        self.last_power: FloatArray | None = None
        exponent = Decimal(repr(spec.register_resolution_kwh)).as_tuple().exponent
        self.decimals = max(0, -int(exponent))

    # --- ground truth -------------------------------------------------------------------

    def meters(self) -> list[ElecMeter]:
        """Customer meters then master meters."""
        return [*self.customers, *self.masters]

    def registry_rows(self) -> list[dict[str, str]]:
        """Registry rows of every electricity meter."""
        return [
            registry_row(
                m.meter_id,
                "elec",
                m.lot,
                role=m.role,
                district=m.district,
                installed_on=m.installed_on,
            )
            for m in self.meters()
        ]

    def truth(self) -> dict[str, MeterTruth]:
        """Per meter: role, district, lot, true error, planted faults and events so far."""
        out: dict[str, MeterTruth] = {}
        for m in self.meters():
            out[m.meter_id] = {
                "kind": "elec",
                "role": m.role,
                "district": m.district,
                "lot": m.lot.lot_id,
                "error_pct": m.error * 100,
                "vacant": m.vacant,
                "faults": list(m.faults),
                "fault_ms": dict(m.fault_ms),
                "events": [dict(e) for e in m.events],
            }
        for d, m in enumerate(self.masters):
            out[m.meter_id]["fixed_loss_kw"] = float(self.model.fixed_loss_kw[d])
            out[m.meter_id]["gamma_per_kw"] = float(self.model.gamma_per_kw[d])
        return out

    def true_energy_kwh(self, meter_id: str, first_k: int, end_k: int) -> float:
        """True energy through a meter over intervals [first_k, end_k).

        Household use for a customer meter; the area's input (consumption plus losses) for
        a master meter. Raises KeyError for an unknown meter.
        """
        customers = {m.meter_id: i for i, m in enumerate(self.customers)}
        masters = {m.meter_id: d for d, m in enumerate(self.masters)}
        if meter_id not in customers and meter_id not in masters:
            raise KeyError(meter_id)
        total = 0.0
        for k in range(first_k, end_k):
            x, inflow = self.model.energy(k)
            if meter_id in customers:
                total += float(x[customers[meter_id]])
            else:
                total += float(inflow[masters[meter_id]])
        return total

    # --- one interval -------------------------------------------------------------------

    def _power(self, k: int) -> FloatArray:
        """Mean power (kW) over interval k through every meter, customers then masters."""
        x, inflow = self.model.energy(k)
        return np.concatenate([x, inflow]) / self.model.hours

    def step(self, k: int, out: Produced) -> None:
        """Readings at the start of interval k and its events; then the interval's energy."""
        spec = self.spec
        t0 = k * spec.interval_ms
        if self.last_power is None:
            self.last_power = self._power(k - 1)
        rng = rng_for(spec.seed, _EVENT_KEY, k)
        self.seq += 1
        self._readings(t0, rng, out)
        self._events(t0, rng, out)
        power = self._power(k)
        # A stopped register (function failure) no longer counts though current flows.
        self.cum += self.factor * power * self.model.hours * (t0 < self.stopped_from)
        self.last_power = power

    def _readings(self, t0: int, rng: np.random.Generator, out: Produced) -> None:
        assert self.last_power is not None
        spec, res, n = self.spec, self.spec.register_resolution_kwh, len(self.customers)
        power, district_of = self.last_power, self.model.district_of
        # Voltage sags with the area's load and along the service cable with the household's.
        v_area = 223.0 - 0.08 * power[n:] + rng.normal(0.0, 0.7, spec.districts)
        v_home = v_area[district_of] - 0.4 * power[:n] + rng.normal(0.0, 0.3, n)
        volts = np.concatenate([v_home, v_area])
        # Master meters are three-phase: current per phase.
        amps = power * 1000 / volts / np.concatenate([np.ones(n), np.full(spec.districts, 3.0)])
        energy = np.floor(self.cum / res) * res
        self._format(t0, energy, volts, amps, self._clock_offsets(t0), out)

    def _clock_offsets(self, t0: int) -> FloatArray:
        # A failing clock battery lets the clock run away at 150 s/day from the event on,
        # so the ±300 s limit is crossed about two days later.
        days = (t0 - self.spec.start_ms) / 86_400_000
        runaway = np.maximum(0, t0 - self.clock_fault_from) / 86_400_000 * 150.0
        return self.clock_offset + self.clock_drift * days + runaway

    def _format(
        self,
        t0: int,
        energy: FloatArray,
        volts: FloatArray,
        amps: FloatArray,
        offsets: FloatArray,
        out: Produced,
    ) -> None:
        assert self.last_power is not None
        dec, seq = self.decimals, self.seq
        ts_text = (ts_json(t0, False, self.tz), ts_json(t0, True, self.tz))
        columns = zip(
            self.topics,
            self.epoch_ts,
            energy.tolist(),
            volts.tolist(),
            amps.tolist(),
            self.last_power.tolist(),
            offsets.tolist(),
            strict=True,
        )
        for topic, epoch, e, v, a, p, o in columns:
            payload = (
                f'{{"ts":{ts_text[epoch]},"energy_kwh":{e:.{dec}f},"reverse_kwh":0.0,'
                f'"voltage_v":{v:.1f},"current_a":{a:.2f},"power_kw":{p:.3f},'
                f'"clock_offset_s":{o:.1f},"seq":{seq}}}'
            )
            out.periodic.append(SimMessage(t0, topic, payload.encode()))

    def _events(self, t0: int, rng: np.random.Generator, out: Produced) -> None:
        spec = self.spec
        t1 = t0 + spec.interval_ms
        for m in self.customers:
            for name, code in (("tamper", "cover_open"), ("clock", "clock_battery_low")):
                at = m.fault_ms.get(name)
                if at is not None and t0 <= at < t1:
                    out.reliable.append(self._event(m, at, code))
        p = spec.elec_event_rate_per_day * spec.interval_s / DAY_S
        hits = np.flatnonzero(rng.random(len(self.customers)) < p).tolist()
        codes = rng.choice(len(_BENIGN_EVENTS), len(hits)).tolist()
        offsets = rng.integers(0, spec.interval_s, len(hits)).tolist()
        for i, c, s in zip(hits, codes, offsets, strict=True):
            out.reliable.append(self._event(self.customers[i], t0 + s * 1000, _BENIGN_EVENTS[c]))

    def _event(self, meter: ElecMeter, at: int, code: str) -> SimMessage:
        meter.events.append({"ts_ms": at, "code": code})
        ts = ts_json(at, meter.epoch_ts, self.tz)
        payload = f'{{"ts":{ts},"code":"{code}","detail":"{_DETAILS[code]}"}}'
        topic = f"{self.spec.topic_root}/elec/{meter.district}/{meter.meter_id}/event"
        return SimMessage(at, topic, payload.encode())
