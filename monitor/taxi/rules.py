"""Taxi fare meter rules: distance bias against GNSS, CUSUM, fares, seals (DOMAIN §2).

Each function takes data and a rule block of `rules.yaml` and returns numbers or
findings; none of them reads a clock, a store or a file. The evidence per meter is

- per trip the log-ratio `ln(meter_km / gps_km)` for trips long enough to trust GNSS;
- the meter's bias against the fleet: the median of its last trips' log-ratios minus
  the fleet median (which cancels the GNSS bias every meter shares);
- a two-sided CUSUM on the standardised log-ratio to catch a change;
- every fare recomputed from the tariff in force at the trip's end;
- seal and parameter events and heartbeats, excused only by an open work order.

`taxi_findings` combines them into findings for `monitor.decide.decide_meter` and the
evidence dict of CONTRACT §4.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from itertools import pairwise
from statistics import NormalDist
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from monitor.core.decision import Finding, Reason, worst_state
from monitor.core.ports import Columns, MeterPoint, Point, Series
from monitor.core.rulebook import DistanceRule, FareRule, SealRule, TaxiRules
from monitor.ingest.telemetry import format_ts, ms_to_datetime
from monitor.taxi.tariff import Tariff, TariffBook, fare_decimal, round_half_up

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

DAY_MS = 86_400_000
# DOMAIN §2 counts gross trips "in a month"; a month is the 30 days before as_of.
MONTH_MS = 30 * DAY_MS
# 1.4826·MAD estimates σ of a normal sample without being moved by outlier trips
# (GNSS dropouts, pulse injection).
MAD_TO_SIGMA = 1.4826
# The standard error of a sample median is √(π/2)·σ/√N ≈ 1.2533·σ/√N (DOMAIN §2).
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
# Not in rules.yaml (DOMAIN §2 states it as a fact, not a setting): urban GNSS distance
# error per trip lies in −0.4 … +5.5 %. Half its width in log terms (≈ 2.9 %) is the
# smallest per-trip spread the CUSUM standardises by. Why a floor: GNSS errors cluster
# by route and weather, so trips are not independent, and a CUSUM with k = 0.5, h = 5
# on independent unit-variance data alarms on average every ~470 trips — a per-trip
# MAD alone (≈ 1.2 % in the simulator) would make most clean meters alarm within the
# 60 days (~1200 trips) a meter is watched. With the floor a trip at the edge of the
# ordinary GNSS band is one σ, and a +5 % step still alarms within a few trips.
GNSS_BAND_PCT = (-0.4, 5.5)
GNSS_SIGMA_FLOOR = (math.log1p(GNSS_BAND_PCT[1] / 100) - math.log1p(GNSS_BAND_PCT[0] / 100)) / 2
# Not in rules.yaml: standardised log-ratios are winsorised at ±3 before the CUSUM so
# that one gross trip (a GNSS track with a gap) adds at most 3 − k = 2.5 < h and it
# takes three in a row to alarm; scattered gross trips have their own rule
# (≥ gross_trips_per_month in 30 days).
CUSUM_Z_CLIP = 3.0
# Not in rules.yaml: fare mismatches are "systematic" only when at least this share of
# them go the same way (all overcharges, or all undercharges): a tamper or wrong tariff
# pushes one way, data glitches scatter both ways.
FARE_ONE_SIGN_SHARE = 0.8
# pulses_per_km is a float field; a change smaller than this relative amount is float
# noise of the transport, not a parameter change.
PPK_REL_TOL = 1e-9


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Trip:
    """One finished trip as stored (CONTRACT §1 `trip`); times in epoch ms."""

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


def _optional_float(value: Any) -> float | None:
    # Stores hand back absent numbers as None or NaN; neither is a measurement.
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _trip_from_point(point: MeterPoint) -> Trip | None:
    values = point.values
    trip_id = values.get("trip_id")
    meter_km = _optional_float(values.get("meter_km"))
    fare = _optional_float(values.get("fare_cny"))
    if trip_id is None or meter_km is None or fare is None:
        return None  # ingest requires these; a point without them is not a trip
    start = _optional_float(values.get("start_ts"))
    return Trip(
        trip_id=str(trip_id),
        start_ms=int(start) if start is not None else point.ts_ms,
        end_ms=point.ts_ms,
        meter_km=meter_km,
        fare_cny=fare,
        tariff_version=str(values.get("tariff_version") or ""),
        gps_km=_optional_float(values.get("gps_km")),
        wait_s=_optional_float(values.get("wait_s")),
    )


def trips_from_points(points: Sequence[MeterPoint]) -> list[Trip]:
    """Stored trip points → trips sorted by end time, one per trip_id (at-least-once delivery).

    `MeterPoint.ts_ms` is the trip's end. Of duplicates the earliest-ending copy is kept,
    so the answer does not depend on the order the store returns them in.
    """
    trips = [t for t in (_trip_from_point(p) for p in points) if t is not None]
    trips.sort(key=lambda t: (t.end_ms, t.trip_id))
    seen: set[str] = set()
    unique = []
    for trip in trips:
        if trip.trip_id not in seen:
            seen.add(trip.trip_id)
            unique.append(trip)
    return unique


# --------------------------------------------------------------- distance per trip


@dataclass(frozen=True)
class TripRatios:
    """Per-trip distance evidence of one meter, in trip end order."""

    log_ratio: Floats  # ln(meter_km / gps_km) of the usable trips
    end_ms: Ints  # their end times, aligned with log_ratio
    n_trips: int  # all trips given
    n_without_gps: int  # no GNSS distance: counted, never guessed
    n_short: int  # gps_km below min_trip_km: GNSS too coarse to judge
    n_zero_meter: int  # GNSS says ≥ min_trip_km but the meter registered nothing
    suspect_end_ms: list[int] = field(default_factory=list)  # ρ ≥ suspect_ratio
    gross_end_ms: list[int] = field(default_factory=list)  # ρ ≥ gross_ratio

    @property
    def n_usable(self) -> int:
        """Trips that carry a log-ratio."""
        return len(self.log_ratio)

    @property
    def n_suspect(self) -> int:
        """Trips with ρ ≥ suspect_ratio (gross trips included)."""
        return len(self.suspect_end_ms)

    @property
    def n_gross(self) -> int:
        """Trips with ρ ≥ gross_ratio."""
        return len(self.gross_end_ms)


def log_ratios(trips: Sequence[Trip], rule: DistanceRule) -> TripRatios:
    """ln(meter_km / gps_km) of trips long enough to trust GNSS, and what was left out.

    The suspect and gross thresholds are applied to ρ itself (not its logarithm) so that
    a ratio written as 1.10 in rules.yaml compares exactly.
    """
    ordered = sorted(trips, key=lambda t: (t.end_ms, t.trip_id))
    ratios: list[float] = []
    ends: list[int] = []
    suspect: list[int] = []
    gross: list[int] = []
    without_gps = short = zero_meter = 0
    for trip in ordered:
        if trip.gps_km is None:
            without_gps += 1
        elif trip.gps_km < rule.min_trip_km:
            short += 1
        elif not trip.meter_km > 0:
            zero_meter += 1
        else:
            rho = trip.meter_km / trip.gps_km
            ratios.append(math.log(rho))
            ends.append(trip.end_ms)
            if rho >= rule.suspect_ratio:
                suspect.append(trip.end_ms)
            if rho >= rule.gross_ratio:
                gross.append(trip.end_ms)
    return TripRatios(
        log_ratio=np.array(ratios, dtype=np.float64),
        end_ms=np.array(ends, dtype=np.int64),
        n_trips=len(ordered),
        n_without_gps=without_gps,
        n_short=short,
        n_zero_meter=zero_meter,
        suspect_end_ms=suspect,
        gross_end_ms=gross,
    )


# ------------------------------------------------------------------ fleet reference


def _pooled_tail(ratios_by_meter: Mapping[str, Floats], window: int) -> Floats:
    """The last `window` log-ratios of every meter, pooled (every meter weighs alike)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    tails = [np.asarray(r, dtype=np.float64)[-window:] for r in ratios_by_meter.values()]
    tails = [t[np.isfinite(t)] for t in tails if len(t)]
    return np.concatenate(tails) if tails else np.empty(0, dtype=np.float64)


def robust_sigma(values: Floats) -> float:
    """1.4826·MAD: the standard deviation of normal data, unmoved by a few outliers."""
    if len(values) == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def fleet_median(ratios_by_meter: Mapping[str, Floats], window: int) -> float | None:
    """Median of the log-ratios of every meter's last `window` trips, or None without data.

    Every meter shares the urban GNSS bias (DOMAIN §2: −0.4 … +5.5 %), so subtracting
    this median leaves each meter's own distance error.
    """
    pooled = _pooled_tail(ratios_by_meter, window)
    return float(np.median(pooled)) if len(pooled) else None


def fleet_sigma(ratios_by_meter: Mapping[str, Floats], window: int) -> float:
    """The per-trip spread the CUSUM standardises by: robust fleet spread, floored.

    1.4826·MAD of the pooled log-ratios (per-trip GNSS scatter plus the spread of the
    meters' own biases; unmoved by tampered meters while they are few), but never below
    `GNSS_SIGMA_FLOOR`, half the width of DOMAIN's GNSS error band (see there why).
    """
    spread = robust_sigma(_pooled_tail(ratios_by_meter, window))
    return max(spread, GNSS_SIGMA_FLOOR) if math.isfinite(spread) else GNSS_SIGMA_FLOOR


# ------------------------------------------------------------------- per-meter bias


def _pct(log_value: float) -> float:
    """A log-scale error → percent, positive when the meter over-registers."""
    return 100.0 * math.expm1(log_value)


@dataclass(frozen=True)
class Bias:
    """A meter's distance error against the fleet (CONTRACT §4 evidence)."""

    error_pct: float  # 100·(exp(δ) − 1); positive = the meter over-registers
    error_ci_pct: tuple[float, float]  # the rule's `confidence` interval (95 %)
    n_trips: int  # log-ratios the median rests on
    delta_log: float  # δ on the log scale
    se_log: float  # standard error of δ on the log scale
    sigma_log: float  # robust per-trip spread of this meter's log-ratios


def distance_bias(ratios: Floats, fleet_median: float, rule: DistanceRule) -> Bias | None:
    """δ = median of the last window_trips log-ratios − fleet median; None below min_trips.

    The standard error is that of a median, 1.2533·σ/√N with σ = 1.4826·MAD of the same
    trips; the uncertainty of the fleet median (thousands of trips) is neglected. The
    interval is δ ± z·se at the rule's two-sided `confidence` (z = 1.96 at 95 %).
    """
    values = np.asarray(ratios, dtype=np.float64)
    recent = values[np.isfinite(values)][-rule.window_trips :]
    n = len(recent)
    if n < rule.min_trips:
        return None
    delta = float(np.median(recent)) - fleet_median
    sigma = robust_sigma(recent)
    se = MEDIAN_SE_FACTOR * sigma / math.sqrt(n)
    z = NormalDist().inv_cdf(0.5 + rule.confidence / 2)
    return Bias(
        error_pct=_pct(delta),
        error_ci_pct=(_pct(delta - z * se), _pct(delta + z * se)),
        n_trips=n,
        delta_log=delta,
        se_log=se,
        sigma_log=sigma,
    )


BiasZone = Literal["inside", "unproven", "outside", "beyond_limit"]
# The finding of a meter whose δ is outside the guard band while its interval reaches back
# inside: `normal` (no verification is sent for what the data do not show), but the meter
# is not extended (see `extendable`).
UNPROVEN_RULE = "taxi.distance.unproven"


def bias_zone(bias: Bias, rule: DistanceRule) -> BiasZone:
    """Where δ and its interval lie against the guard band and the JJG 517 limit.

    The decision rule (guard_band_on = interval; JCGM 106:2012 §8, ILAC G8:09/2019 guarded
    rejection) — δ's standard error, 0.15–0.3 pp, is comparable with the guard band's
    0.5 pp margin, so δ alone leaving the band proves little:

    - `beyond_limit`: the whole interval beyond the limit (non-conformity proven) → faulty;
    - `outside`: the whole interval outside the guard band (leaving it proven), or δ itself
      beyond the limit (a meter whose best estimate is non-conforming is never kept just
      because its data are noisy) → suspect;
    - `unproven`: δ outside the guard band, its interval reaching back inside → normal, but
      not extended: extending needs δ inside the band, whose margin to the limit is the
      guarded acceptance of the period extension;
    - `inside`: δ inside the guard band.

    With guard_band_on = estimate δ alone decides between inside and outside (rules
    before 2026.2).
    """
    low, high = bias.error_ci_pct
    estimate = bias.error_pct
    if low > rule.limit_high_pct or high < rule.limit_low_pct:
        return "beyond_limit"
    if rule.guard_low_pct <= estimate <= rule.guard_high_pct:
        return "inside"
    if (
        rule.guard_band_on == "estimate"
        or low > rule.guard_high_pct
        or high < rule.guard_low_pct
        or not rule.limit_low_pct <= estimate <= rule.limit_high_pct
    ):
        return "outside"
    return "unproven"


def _outside_why(bias: Bias, rule: DistanceRule) -> str:
    """Why a meter in the `outside` zone is there, in words for its reason."""
    low, high = bias.error_ci_pct
    band = f"[{rule.guard_low_pct:g}, {rule.guard_high_pct:+g}] %"
    if rule.guard_band_on == "estimate":
        return f"outside the guard band {band}"
    if low > rule.guard_high_pct or high < rule.guard_low_pct:
        return f"outside the guard band {band} with its whole interval"
    return (
        f"beyond the JJG 517 limit [{rule.limit_low_pct:g}, {rule.limit_high_pct:+g}] % by the "
        f"estimate, though not with confidence, so outside the guard band {band}"
    )


def extendable(findings: Iterable[Finding]) -> bool:
    """Whether a meter's findings allow a period extension.

    Only on evidence (DOMAIN §2: δ inside the guard band, nothing else found): a
    meter with too few trips is `unknown` and keeps its due date, and one whose δ is
    outside the band with an interval reaching back inside (`unproven`) is kept, not
    extended.
    """
    found = list(findings)
    return worst_state(found) == "normal" and not any(f.reason.rule == UNPROVEN_RULE for f in found)


# --------------------------------------------------------------------------- CUSUM


@dataclass(frozen=True)
class Cusum:
    """Result of the two-sided tabular CUSUM over a meter's usable trips."""

    alarm: bool
    direction: Literal["up", "down"] | None  # up = the meter started registering more
    alarm_index: int | None  # index into the log-ratio array of the first alarm
    peak: float  # largest statistic reached on either side

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the evidence."""
        return {
            "alarm": self.alarm,
            "direction": self.direction,
            "alarm_index": self.alarm_index,
            "peak": round(self.peak, 3),
        }


def cusum_reference(ratios: Floats, fleet_median: float, rule: DistanceRule) -> float:
    """The level a meter's CUSUM measures change from: its own start, clamped to the guard band.

    z against the bare fleet median tests a *level*, not a change: a meter that has sat
    at −2 % all along (inside the asymmetric guard band, so `keep`) would drift the lower
    CUSUM by (2 % / σ − k) per trip and alarm within a few dozen trips. So the reference
    is the fleet median plus the meter's own offset over its first window_trips usable
    trips, that offset clamped into [guard_low, guard_high]: a meter that starts inside
    the band is watched for leaving its own level; one that starts outside it is measured
    from the nearer band edge (and the bias rule judges it anyway). With fewer than
    min_trips early trips the fleet median itself is the reference.
    """
    values = np.asarray(ratios, dtype=np.float64)
    early = values[np.isfinite(values)][: rule.window_trips]
    if len(early) < rule.min_trips:
        return fleet_median
    offset = float(np.median(early)) - fleet_median
    low, high = math.log1p(rule.guard_low_pct / 100), math.log1p(rule.guard_high_pct / 100)
    return fleet_median + min(max(offset, low), high)


def cusum(ratios: Floats, fleet_median: float, fleet_sigma: float, rule: DistanceRule) -> Cusum:
    """Two-sided tabular CUSUM on z = (r − fleet_median)/σ_fleet, k = cusum_k, h = cusum_h.

    `fleet_median` is the reference level: the fleet median itself, or the meter's
    guard-band-clamped own level from `cusum_reference` (what `taxi_findings` uses).

    S⁺ᵢ = max(0, S⁺ᵢ₋₁ + zᵢ − k), S⁻ᵢ = max(0, S⁻ᵢ₋₁ − zᵢ − k); the alarm is the first
    i with S > h. z is winsorised at ±CUSUM_Z_CLIP so one gross trip cannot alarm alone.
    The statistic runs to the end after an alarm so that `peak` says how strong it got.
    """
    if not (math.isfinite(fleet_sigma) and fleet_sigma > 0):
        raise ValueError(f"fleet_sigma must be finite and > 0, got {fleet_sigma!r}")
    values = np.asarray(ratios, dtype=np.float64)
    z = np.clip((values - fleet_median) / fleet_sigma, -CUSUM_Z_CLIP, CUSUM_Z_CLIP)
    k, h = rule.cusum_k, rule.cusum_h
    up = down = peak = 0.0
    alarm_index: int | None = None
    direction: Literal["up", "down"] | None = None
    for i, zi in enumerate(z.tolist()):
        if not math.isfinite(zi):
            continue  # a missing ratio is no evidence either way
        up = max(0.0, up + zi - k)
        down = max(0.0, down - zi - k)
        peak = max(peak, up, down)
        if alarm_index is None and (up > h or down > h):
            alarm_index = i
            direction = "up" if up > h else "down"
    return Cusum(alarm_index is not None, direction, alarm_index, peak)


# ---------------------------------------------------------------------------- fares


@dataclass(frozen=True)
class FareCheck:
    """One trip's fare against the tariff that should have priced it."""

    trip_id: str
    end_ms: int
    checked: bool  # False when no tariff was in force or the trip cannot be priced
    reported_cny: float
    expected_cny: float | None = None  # the charged fare the tariff gives
    expected_raw_cny: float | None = None  # the unrounded fare F of CONTRACT §9
    allowed_cny: tuple[float, float] | None = None  # charged fares the tolerance allows
    diff_cny: float = 0.0  # reported − expected charged
    mismatch: bool = False
    version_in_force: str | None = None
    version_applied: str | None = None  # the version the expected fare was computed with
    version_mismatch: bool = False  # the meter priced under another version than in force
    in_grace: bool = False  # an older version within the rollout deadline: not a finding
    note: str = ""


def _dec(value: float) -> Decimal:
    """The decimal a human wrote for this float (the same convention as the tariff module)."""
    return Decimal(repr(float(value)))


def _allowed(raw: Decimal, tol: Decimal, step: float) -> tuple[Decimal, Decimal]:
    """Multiples of `step` a value within ±tol of `raw` rounds (half up) to."""
    low = max(Decimal(0), raw - tol)
    return _dec(round_half_up(low, step)), _dec(round_half_up(raw + tol, step))


def _tariff_to_apply(
    trip: Trip, tariffs: TariffBook, in_force: tuple[str, Tariff], grace_ms: int
) -> tuple[str, Tariff]:
    """The version in force, or the older one the trip names while the rollout deadline runs."""
    version, tariff = in_force
    declared = tariffs.get(trip.tariff_version)
    if trip.tariff_version == version or declared is None:
        return in_force
    deadline = tariff.effective_from + timedelta(milliseconds=grace_ms)
    if declared.effective_from <= ms_to_datetime(trip.end_ms) < deadline:
        return trip.tariff_version, declared
    return in_force


def fare_check(
    trip: Trip,
    tariffs: TariffBook,
    rule: FareRule,
    display_step_default: float = 0.1,
    grace_ms: int = 0,
) -> FareCheck:
    """Recompute a trip's fare from the tariff in force at its end; flag a mismatch.

    Distance is the meter's own `meter_km` (this checks the tariff arithmetic, not the
    distance) and waiting is `wait_s` (0 when absent). Interpretation of "differs by more
    than one display step (and 0.1 %)" for fares charged in whole yuan: the meter may
    legitimately arrive at any unrounded fare within tol = max(tolerance_display_steps ×
    display_step, tolerance_rel × F) of ours (its own distance resolution, display
    rounding), and then rounds half up to the charge step. So the reported fare is
    consistent when it is the charged rounding of some value in [F − tol, F + tol], or the
    displayed rounding (display step) of one, for meters that report the displayed fare.
    A 1-yuan difference is therefore accepted exactly when F lies within tol of a .5
    rounding boundary, and flagged otherwise (a 10 % overcharge of a 14-yuan flag fall is
    only 1 yuan).

    A trip priced under another version than the one in force is reported as
    `version_mismatch` (tariff not applied) and re-priced under the version in force,
    unless it ended within `grace_ms` of that version's effective time and named an
    older known version: then it is checked against that version (rollout deadline).
    """
    end = ms_to_datetime(trip.end_ms)
    found = tariffs.in_force(end)
    if found is None:
        return FareCheck(
            trip.trip_id,
            trip.end_ms,
            False,
            trip.fare_cny,
            note="no tariff in force at the trip's end",
        )
    version = found[0]
    applied_version, applied = _tariff_to_apply(trip, tariffs, found, grace_ms)
    in_grace = applied_version != version
    version_mismatch = trip.tariff_version != version and not in_grace
    wait = trip.wait_s if trip.wait_s is not None else 0.0
    if not (
        math.isfinite(trip.meter_km) and trip.meter_km >= 0 and math.isfinite(wait) and wait >= 0
    ):
        return FareCheck(
            trip.trip_id,
            trip.end_ms,
            False,
            trip.fare_cny,
            version_in_force=version,
            version_applied=applied_version,
            version_mismatch=version_mismatch,
            in_grace=in_grace,
            note="distance or waiting time cannot be priced",
        )
    raw = fare_decimal(applied, trip.meter_km, wait, end)
    display = applied.display_step or display_step_default
    tol = max(_dec(rule.tolerance_display_steps) * _dec(display), _dec(rule.tolerance_rel) * raw)
    charged = _dec(round_half_up(raw, applied.charge_step))
    low, high = _allowed(raw, tol, applied.charge_step)
    d_low, d_high = _allowed(raw, tol, display)
    reported = _dec(trip.fare_cny)
    ok = low <= reported <= high or d_low <= reported <= d_high
    return FareCheck(
        trip.trip_id,
        trip.end_ms,
        True,
        trip.fare_cny,
        expected_cny=float(charged),
        expected_raw_cny=float(raw),
        allowed_cny=(float(low), float(high)),
        diff_cny=float(reported - charged),
        mismatch=not ok,
        version_in_force=version,
        version_applied=applied_version,
        version_mismatch=version_mismatch,
        in_grace=in_grace,
    )


class FareCache:
    """`fare_check` results reused from one evaluation pass to the next; exact.

    A check is a function of the trip and of the tariff book, fare rule and rollout grace
    it is made with: while those stay equal, a trip checked before is not re-priced (a
    rollout or a changed rule empties the cache). `new_pass` starts a pass: what the
    previous pass asked for is kept for this one, the rest is dropped, so the cache holds
    about one window of trips. Safe to share between threads.
    """

    def __init__(self) -> None:
        """Empty."""
        self._lock = threading.Lock()
        self._context: tuple[TariffBook, FareRule, int] | None = None
        self._previous: dict[Trip, FareCheck] = {}
        self._current: dict[Trip, FareCheck] = {}

    def new_pass(self) -> None:
        """Keep the checks the last pass used; drop the older ones."""
        with self._lock:
            self._previous, self._current = self._current, {}

    def check(self, trip: Trip, tariffs: TariffBook, rule: FareRule, grace_ms: int) -> FareCheck:
        """`fare_check(trip, tariffs, rule, grace_ms=grace_ms)`, from the cache when known."""
        with self._lock:  # a check made under one context is never stored under another
            context = self._context
            if context is None or not (
                tariffs is context[0] and rule is context[1] and grace_ms == context[2]
            ):
                if context is None or (tariffs, rule, grace_ms) != context:
                    self._previous, self._current = {}, {}
                self._context = (tariffs, rule, grace_ms)
            found = self._current.get(trip)
            if found is None:
                found = self._previous.get(trip)
                if found is None:
                    found = fare_check(trip, tariffs, rule, grace_ms=grace_ms)
                self._current[trip] = found
            return found


@dataclass(frozen=True)
class FareSummary:
    """A meter's fare checks in numbers."""

    n_checked: int
    n_mismatch: int
    share: float  # n_mismatch / n_checked (0 when nothing was checked)
    mean_diff_cny: float  # mean (reported − expected) over checked trips
    systematic: bool  # share ≥ systematic_share and the mismatches mostly one way
    n_version_mismatch: int = 0
    mismatch_ids: list[str] = field(default_factory=list)  # the first few, for the reason


def fare_summary(checks: Sequence[FareCheck], rule: FareRule) -> FareSummary:
    """Mismatch share, mean difference and whether the mismatches look systematic."""
    checked = [c for c in checks if c.checked]
    mismatches = [c for c in checked if c.mismatch]
    share = len(mismatches) / len(checked) if checked else 0.0
    mean_diff = float(np.mean([c.diff_cny for c in checked])) if checked else 0.0
    over = sum(1 for c in mismatches if c.diff_cny > 0)
    under = sum(1 for c in mismatches if c.diff_cny < 0)
    one_way = bool(mismatches) and max(over, under) >= FARE_ONE_SIGN_SHARE * len(mismatches)
    return FareSummary(
        n_checked=len(checked),
        n_mismatch=len(mismatches),
        share=share,
        mean_diff_cny=mean_diff,
        systematic=share >= rule.systematic_share and one_way,
        n_version_mismatch=sum(1 for c in checks if c.version_mismatch),
        mismatch_ids=[c.trip_id for c in mismatches[:5]],
    )


# ---------------------------------------------------------------- seals, parameters


@dataclass(frozen=True)
class _Beat:
    ts_ms: int
    seal: str | None
    pulses_per_km: float | None


def _beats(meter: str, status: Series | Sequence[MeterPoint]) -> list[_Beat]:
    """Heartbeats of `meter`, oldest first, one per timestamp (duplicates dropped).

    A `Series` carries numeric columns only, so from it only pulses_per_km is known.
    """
    if isinstance(status, Series):
        ppk = status.values.get("pulses_per_km")
        beats = [
            _Beat(int(ts), None, _optional_float(ppk[i]) if ppk is not None else None)
            for i, ts in enumerate(status.ts_ms.tolist())
        ]
    else:
        beats = [
            _Beat(
                p.ts_ms,
                str(p.values["seal"]) if p.values.get("seal") is not None else None,
                _optional_float(p.values.get("pulses_per_km")),
            )
            for p in status
            if p.meter == meter
        ]
    beats.sort(key=lambda b: b.ts_ms)
    return [b for i, b in enumerate(beats) if i == 0 or b.ts_ms != beats[i - 1].ts_ms]


# What `seal_findings` and the rollout progress read of a heartbeat (`telling_heartbeats`).
HEARTBEAT_FIELDS = ("seal", "pulses_per_km", "tariff_version")
_AnyPoint = TypeVar("_AnyPoint", Point, MeterPoint)


def telling_heartbeats(beats: Sequence[_AnyPoint]) -> list[_AnyPoint]:
    """One meter's heartbeats cut to those the rules can tell apart from the whole series.

    A meter sends a heartbeat every few minutes and for weeks they all say the same.
    In time order, a run is a stretch of heartbeats with equal values (HEARTBEAT_FIELDS,
    all that `load` reads; any other field only cuts runs finer); kept are the first and
    the last of every run and every heartbeat with seal "broken". Every finding and
    answer is then the same as from all of them:

    - a broken-seal run is kept whole: its count, first and last time, and where the
      covering work order changes (`seal_findings`);
    - a pulse-constant change lies between the last heartbeat of one value and the first
      of the next: both ends of runs (`seal_findings`);
    - the first heartbeat naming a tariff version starts a run (`rollout.applied_at`).

    Oldest first (a stable sort, so heartbeats of equal time keep their order).
    """
    ordered = sorted(beats, key=lambda b: b.ts_ms)
    values: list[dict[str, Any]] = [b.values for b in ordered]
    # new[i]: heartbeat i starts a run (dicts compared in C, no tuple per heartbeat)
    new = [True, *(a != b for a, b in pairwise(values))]
    new.append(True)  # past the last heartbeat: the last one ends its run
    return [
        beat
        for i, beat in enumerate(ordered)
        if new[i] or new[i + 1] or _broken(values[i].get("seal"))
    ]


def telling_mask(status: Columns) -> NDArray[np.bool_]:
    """`telling_heartbeats` on columns: which heartbeats of one meter (in time order) tell.

    The same rule without a Python object per heartbeat: heartbeat i starts a run when a
    HEARTBEAT_FIELDS column differs from heartbeat i - 1 (text compared element by element,
    None = absent; numbers by value, NaN = absent and equal to another absent), ends one
    when i + 1 starts one; kept are the ends of runs and every seal "broken". Columns the
    status lacks count as absent throughout.
    """
    n = len(status.ts_ms)
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    if n > 1 and bool((status.ts_ms[1:] < status.ts_ms[:-1]).any()):
        raise ValueError("heartbeats not in time order")
    changed = np.zeros(n - 1, dtype=np.bool_)
    for name in HEARTBEAT_FIELDS:
        col = status.values.get(name)
        if col is None:
            continue
        before, after = col[:-1], col[1:]
        if col.dtype == object:
            changed |= np.asarray(before != after, dtype=np.bool_)
        else:
            changed |= (before != after) & ~(np.isnan(before) & np.isnan(after))
    new = np.ones(n + 1, dtype=np.bool_)  # new[i]: i starts a run; new[n]: past the last
    new[1:n] = changed
    keep = new[:n] | new[1:]
    seal = status.values.get("seal")
    if seal is not None:
        keep |= np.asarray(seal == "broken", dtype=np.bool_)
    return keep


def telling_points(meter: str, status: Columns) -> list[MeterPoint]:
    """The heartbeats `telling_mask` keeps, as `MeterPoint`s of the HEARTBEAT_FIELDS they
    carry (absent ones left out): what `telling_heartbeats` keeps of the same points.
    Out of time order, they are put in order first (a stable sort, as there)."""
    ts_ms = status.ts_ms
    if len(ts_ms) > 1 and bool((ts_ms[1:] < ts_ms[:-1]).any()):
        by_time = np.argsort(ts_ms, kind="stable")
        status = Columns(ts_ms[by_time], {k: v[by_time] for k, v in status.values.items()})
    keep = np.flatnonzero(telling_mask(status))
    ts = status.ts_ms[keep].tolist()
    columns: list[tuple[str, list[Any]]] = []
    for name in HEARTBEAT_FIELDS:
        col = status.values.get(name)
        if col is None:
            continue
        picked = col[keep].tolist()
        if col.dtype != object:  # NaN: absent
            picked = [None if math.isnan(v) else v for v in picked]
        columns.append((name, picked))
    return [
        MeterPoint(meter, t, {name: vals[i] for name, vals in columns if vals[i] is not None})
        for i, t in enumerate(ts)
    ]


def _broken(seal: object) -> bool:
    """A seal value `_beats` reads as "broken"."""
    return seal is not None and str(seal) == "broken"


def _cover(
    meter: str, start_ms: int, end_ms: int, work_orders: Iterable[WorkOrder]
) -> WorkOrder | None:
    """The first work order open on `meter` at some time in [start_ms, end_ms]."""
    return next((w for w in work_orders if w.overlaps(meter, start_ms, end_ms)), None)


def _seal_finding(reason: Reason, cover: WorkOrder | None, severity: str) -> Finding:
    """Critical and an inspection, unless a work order explains it."""
    if cover is None:
        return Finding("suspect", reason, inspect=True, severity=severity)
    detail = f"{reason.detail}; covered by {cover.describe()}"
    return Finding(
        "normal",
        Reason(reason.rule, reason.value, reason.threshold, detail),
        severity="info",
    )


def _event_findings(
    meter: str,
    events: Sequence[MeterPoint],
    work_orders: Sequence[WorkOrder],
    rule: SealRule,
) -> list[Finding]:
    seen: set[tuple[int, str]] = set()
    out = []
    for event in sorted(events, key=lambda e: (e.ts_ms, str(e.values.get("code")))):
        code = str(event.values.get("code"))
        if event.meter != meter or code not in rule.codes or (event.ts_ms, code) in seen:
            continue
        seen.add((event.ts_ms, code))  # at-least-once delivery: one event, one finding
        reason = Reason(
            "taxi.seal.event",
            code,
            rule.codes,
            f"{code} event at {format_ts(event.ts_ms)}",
        )
        cover = _cover(meter, event.ts_ms, event.ts_ms, work_orders)
        out.append(_seal_finding(reason, cover, rule.severity))
    return out


def _broken_runs(
    meter: str, beats: Sequence[_Beat], work_orders: Sequence[WorkOrder]
) -> list[tuple[list[_Beat], WorkOrder | None]]:
    """Consecutive heartbeats with seal "broken", split where the covering work order changes.

    A heartbeat every 5 minutes would otherwise give hundreds of findings for one break,
    and a seal left broken after the work order closed must still be found.
    """
    runs: list[tuple[list[_Beat], WorkOrder | None]] = []
    previous_broken = False
    for beat in beats:
        if beat.seal is None:
            continue  # a heartbeat without a seal field neither ends nor continues a run
        broken = beat.seal == "broken"
        if broken:
            cover = _cover(meter, beat.ts_ms, beat.ts_ms, work_orders)
            if previous_broken and runs[-1][1] == cover:
                runs[-1][0].append(beat)
            else:
                runs.append(([beat], cover))
        previous_broken = broken
    return runs


def _heartbeat_findings(
    meter: str, beats: Sequence[_Beat], work_orders: Sequence[WorkOrder], rule: SealRule
) -> list[Finding]:
    out = []
    for run, cover in _broken_runs(meter, beats, work_orders):
        first, last = run[0].ts_ms, run[-1].ts_ms
        span = f"at {format_ts(first)}"
        if len(run) > 1:
            span = f"from {format_ts(first)} to {format_ts(last)} ({len(run)} heartbeats)"
        reason = Reason("taxi.seal.heartbeat", "broken", "intact", f"heartbeat seal broken {span}")
        out.append(_seal_finding(reason, cover, rule.severity))
    return out


def _ppk_findings(
    meter: str, beats: Sequence[_Beat], work_orders: Sequence[WorkOrder], rule: SealRule
) -> list[Finding]:
    out = []
    reporting = [b for b in beats if b.pulses_per_km is not None]
    for before, after in pairwise(reporting):
        old, new = before.pulses_per_km, after.pulses_per_km
        assert old is not None and new is not None
        if abs(new - old) <= PPK_REL_TOL * max(abs(old), abs(new)):
            continue
        reason = Reason(
            "taxi.param.pulses_per_km",
            [old, new],
            old,
            f"pulse constant changed from {old:g} to {new:g} between heartbeats at "
            f"{format_ts(before.ts_ms)} and {format_ts(after.ts_ms)}",
        )
        # The change happened somewhere between the two heartbeats.
        cover = _cover(meter, before.ts_ms, after.ts_ms, work_orders)
        out.append(_seal_finding(reason, cover, rule.severity))
    return out


def seal_findings(
    meter: str,
    status: Series | Sequence[MeterPoint],
    events: Sequence[MeterPoint],
    work_orders: Sequence[WorkOrder],
    rule: SealRule,
) -> list[Finding]:
    """Seal breaks and parameter changes: critical unless an open work order covers them.

    Sources: `seal_broken` / `param_changed` events (rule.codes), heartbeats reporting
    seal "broken" (one finding per run of them), and a change of `pulses_per_km` between
    consecutive heartbeats that report it. Covered ones become info-level `normal`
    findings naming the work order, so the decision shows why they were excused.
    """
    beats = _beats(meter, status)
    return (
        _event_findings(meter, events, work_orders, rule)
        + _heartbeat_findings(meter, beats, work_orders, rule)
        + _ppk_findings(meter, beats, work_orders, rule)
    )


# ------------------------------------------------------------------------ combined


def _bias_findings(
    bias: Bias | None, ratios: TripRatios, median: float | None, rule: DistanceRule
) -> list[Finding]:
    """The bias judgement of DOMAIN §2, or an honest `unknown`."""
    if median is None:
        return [
            Finding(
                "unknown",
                Reason("taxi.distance.fleet", None, None, "no fleet reference: no usable trips"),
            )
        ]
    if bias is None:
        return [
            Finding(
                "unknown",
                Reason(
                    "taxi.distance.min_trips",
                    ratios.n_usable,
                    rule.min_trips,
                    f"only {ratios.n_usable} usable trips (GNSS ≥ {rule.min_trip_km:g} km) of "
                    f"{ratios.n_trips}: {ratios.n_without_gps} without GNSS distance, "
                    f"{ratios.n_short} short",
                ),
            )
        ]
    value = round(bias.error_pct, 3)
    low, high = bias.error_ci_pct
    ci = f"{100 * rule.confidence:g} % interval [{low:+.2f}, {high:+.2f}] %, {bias.n_trips} trips"
    band = [rule.guard_low_pct, rule.guard_high_pct]
    limits = [rule.limit_low_pct, rule.limit_high_pct]
    zone = bias_zone(bias, rule)
    if zone == "beyond_limit":
        return [
            Finding(
                "faulty",
                Reason(
                    "taxi.distance.limit",
                    value,
                    limits,
                    f"distance error {value:+.2f} % beyond the JJG 517 limit "
                    f"[{limits[0]:g}, {limits[1]:+g}] % with confidence ({ci})",
                ),
                severity="critical",
            )
        ]
    if zone == "outside":
        why = _outside_why(bias, rule)
        return [
            Finding(
                "suspect",
                Reason(
                    "taxi.distance.guard_band",
                    value,
                    band,
                    f"distance error {value:+.2f} % {why} ({ci}): on-site verification",
                ),
                severity=rule.severity,
            )
        ]
    if zone == "unproven":
        return [
            Finding(
                "normal",
                Reason(
                    UNPROVEN_RULE,
                    value,
                    band,
                    f"distance error {value:+.2f} % outside the guard band "
                    f"[{band[0]:g}, {band[1]:+g}] % by the estimate only: its {ci} reaches "
                    "back inside, so leaving the band is not proven; kept, not extended",
                ),
            )
        ]
    return [
        Finding(
            "normal",
            Reason(
                "taxi.distance.bias",
                value,
                band,
                f"distance error {value:+.2f} % inside the guard band "
                f"[{band[0]:g}, {band[1]:+g}] % ({ci})",
            ),
        )
    ]


def _cusum_finding(
    result: Cusum, ratios: TripRatios, sigma: float, rule: DistanceRule
) -> Finding | None:
    if not result.alarm or result.alarm_index is None:
        return None
    at = format_ts(int(ratios.end_ms[result.alarm_index]))
    moved = "more" if result.direction == "up" else "less"
    return Finding(
        "suspect",
        Reason(
            "taxi.distance.cusum",
            round(result.peak, 3),
            rule.cusum_h,
            f"CUSUM (k={rule.cusum_k:g}, h={rule.cusum_h:g}, σ={100 * sigma:.2f} %) alarmed "
            f"{result.direction} at usable trip #{result.alarm_index} ending {at}: the meter "
            f"started registering {moved} distance than GNSS",
        ),
        severity=rule.severity,
    )


def _gross_finding(gross_30d: int, ratios: TripRatios, rule: DistanceRule) -> Finding | None:
    if gross_30d < rule.gross_trips_per_month:
        return None
    return Finding(
        "suspect",
        Reason(
            "taxi.distance.gross_trips",
            gross_30d,
            rule.gross_trips_per_month,
            f"{gross_30d} trips with meter/GNSS ≥ {rule.gross_ratio:g} in the last 30 days "
            f"(last ending {format_ts(max(ratios.gross_end_ms))}): pulse injection or an "
            "altered pulse constant?",
        ),
        severity=rule.severity,
    )


def _fare_findings(summary: FareSummary, rules: TaxiRules) -> list[Finding]:
    out = []
    if summary.n_mismatch and rules.fare.enabled:
        kind = "systematic" if summary.systematic else "isolated"
        out.append(
            Finding(
                "suspect",
                Reason(
                    "taxi.fare.systematic" if summary.systematic else "taxi.fare.mismatch",
                    round(summary.share, 4),
                    rules.fare.systematic_share,
                    f"{summary.n_mismatch} of {summary.n_checked} fares differ from the tariff "
                    f"beyond one display step and its rounding ({kind}; mean difference "
                    f"{summary.mean_diff_cny:+.2f} CNY per trip; e.g. "
                    f"{', '.join(summary.mismatch_ids)})",
                ),
                inspect=True,
                severity=rules.fare.severity if summary.systematic else "minor",
            )
        )
    if summary.n_version_mismatch and rules.tariff.enabled:
        out.append(
            Finding(
                "suspect",
                Reason(
                    "taxi.tariff.version",
                    summary.n_version_mismatch,
                    0,
                    f"{summary.n_version_mismatch} trips priced under another tariff version "
                    f"than the one in force after the {rules.tariff.deadline_h:g} h rollout "
                    "deadline (tariff not applied); re-priced under the tariff in force",
                ),
                inspect=True,
                severity=rules.tariff.severity,
            )
        )
    return out


def _status_until(
    status: Series | Sequence[MeterPoint], as_of_ms: int
) -> Series | list[MeterPoint]:
    if isinstance(status, Series):
        keep = status.ts_ms <= as_of_ms
        return Series(status.ts_ms[keep], {k: v[keep] for k, v in status.values.items()})
    return [p for p in status if p.ts_ms <= as_of_ms]


@dataclass(frozen=True)
class _DistanceResult:
    """What the distance rules found for one meter, kept together for the evidence."""

    ratios: TripRatios
    bias: Bias | None
    cusum: Cusum
    reference: float | None  # the CUSUM reference level (log scale)
    sigma: float
    gross_30d: int
    findings: list[Finding]
    zone: BiasZone | None = None  # where δ and its interval lie (None without a bias)


def _distance_rules(
    trips: Sequence[Trip],
    fleet_median: float | None,
    fleet_sigma: float | None,
    rule: DistanceRule,
    as_of_ms: int,
) -> _DistanceResult:
    """Bias, CUSUM and gross trips of one meter (DOMAIN §2 "evidence per meter")."""
    ratios = log_ratios(trips, rule)
    sigma = fleet_sigma if fleet_sigma is not None and fleet_sigma > 0 else GNSS_SIGMA_FLOOR
    gross_30d = sum(1 for ts in ratios.gross_end_ms if ts > as_of_ms - MONTH_MS)
    bias, result, reference = None, Cusum(False, None, None, 0.0), None
    if not rule.enabled:
        return _DistanceResult(ratios, bias, result, reference, sigma, gross_30d, [])
    if fleet_median is not None:
        bias = distance_bias(ratios.log_ratio, fleet_median, rule)
        reference = cusum_reference(ratios.log_ratio, fleet_median, rule)
        result = cusum(ratios.log_ratio, reference, sigma, rule)
    findings = _bias_findings(bias, ratios, fleet_median, rule)
    extra = (_cusum_finding(result, ratios, sigma, rule), _gross_finding(gross_30d, ratios, rule))
    findings += [f for f in extra if f is not None]
    zone = bias_zone(bias, rule) if bias is not None else None
    return _DistanceResult(ratios, bias, result, reference, sigma, gross_30d, findings, zone)


def _evidence(
    dist: _DistanceResult,
    fleet_median: float | None,
    fares: FareSummary,
    seals: Sequence[Finding],
) -> dict[str, Any]:
    """The evidence of CONTRACT §4: error_pct, error_ci_pct, n_trips and what else counted."""
    ratios, bias, result = dist.ratios, dist.bias, dist.cusum
    shift = None
    if dist.reference is not None and fleet_median is not None:
        shift = round(_pct(dist.reference - fleet_median), 3)
    alarm_ts = None
    if result.alarm_index is not None:
        alarm_ts = format_ts(int(ratios.end_ms[result.alarm_index]))
    return {
        "error_pct": round(bias.error_pct, 3) if bias else None,
        "error_ci_pct": [round(v, 3) for v in bias.error_ci_pct] if bias else None,
        "distance_zone": dist.zone,
        "n_trips": bias.n_trips if bias else ratios.n_usable,
        "n_trips_total": ratios.n_trips,
        "n_trips_usable": ratios.n_usable,
        "n_trips_without_gps": ratios.n_without_gps,
        "n_trips_short": ratios.n_short,
        "n_trips_zero_meter": ratios.n_zero_meter,
        "suspect_trips": ratios.n_suspect,
        "gross_trips": ratios.n_gross,
        "gross_trips_30d": dist.gross_30d,
        "fleet_median_pct": round(_pct(fleet_median), 3) if fleet_median is not None else None,
        "fleet_sigma_pct": round(100 * dist.sigma, 3),
        "cusum": {**result.as_dict(), "alarm_ts": alarm_ts, "reference_pct": shift},
        "fare_checked": fares.n_checked,
        "fare_mismatches": fares.n_mismatch,
        "fare_mismatch_share": round(fares.share, 4),
        "fare_mean_diff_cny": round(fares.mean_diff_cny, 3),
        "fare_systematic": fares.systematic,
        "tariff_version_mismatches": fares.n_version_mismatch,
        "seal_findings": sum(1 for f in seals if f.state != "normal"),
        "seal_covered": sum(1 for f in seals if f.state == "normal"),
    }


def taxi_findings(
    meter: str,
    trips: Sequence[Trip],
    fleet_median: float | None,
    fleet_sigma: float | None,
    status_points: Series | Sequence[MeterPoint],
    events: Sequence[MeterPoint],
    work_orders: Sequence[WorkOrder],
    tariffs: TariffBook,
    rules: TaxiRules,
    as_of_ms: int,
    fares: FareCache | None = None,
) -> tuple[list[Finding], dict[str, Any]]:
    """All taxi rules for one meter as of `as_of_ms`: findings and CONTRACT §4 evidence.

    Only data with event time ≤ as_of counts, so a replay gives the same answer.
    `fleet_median` and `fleet_sigma` come from the functions of those names over the
    fleet; a missing sigma falls back to the GNSS floor. The states (DOMAIN §2): normal
    inside the guard band with nothing else (also when δ is outside it but its interval
    reaches back inside: not extended, see `bias_zone`); suspect when the whole interval
    is outside it or δ beyond the limit, on a CUSUM alarm, on ≥ gross_trips_per_month
    gross trips in 30 days, or on any seal / parameter / fare / tariff finding; faulty
    when the whole interval lies beyond the JJG 517 limit; unknown with its reason when
    fewer than min_trips trips are usable. `fares`, when
    given, answers the fare checks of trips it has checked before (same result).
    """
    past = [t for t in trips if t.end_ms <= as_of_ms]
    dist = _distance_rules(past, fleet_median, fleet_sigma, rules.distance, as_of_ms)

    grace_ms = int(rules.tariff.deadline_h * 3_600_000)
    if fares is None:
        checks = [fare_check(t, tariffs, rules.fare, grace_ms=grace_ms) for t in past]
    else:
        checks = [fares.check(t, tariffs, rules.fare, grace_ms) for t in past]
    summary = fare_summary(checks, rules.fare)

    seals: list[Finding] = []
    if rules.seal.enabled:
        seals = seal_findings(
            meter,
            _status_until(status_points, as_of_ms),
            [e for e in events if e.ts_ms <= as_of_ms],
            work_orders,
            rules.seal,
        )
    findings = dist.findings + _fare_findings(summary, rules) + seals
    return findings, _evidence(dist, fleet_median, summary, seals)
