"""Distance bias against GNSS (docs/metrology.md): per-trip log-ratios, the fleet reference, the
meter's bias with its interval and where it lies against the guard band and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from monitor.core.decision import Finding, worst_state
from monitor.core.rulebook import DistanceRule
from monitor.taxi.trips import Trip

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

# 1.4826·MAD estimates σ of a normal sample without being moved by outlier trips
# (GNSS dropouts, pulse injection).
MAD_TO_SIGMA = 1.4826
# The standard error of a sample median is √(π/2)·σ/√N ≈ 1.2533·σ/√N.
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
# Not in rules.yaml (a measured fact, not a setting; docs/metrology.md): urban GNSS distance
# error per trip lies in −0.4 … +5.5 %. Half its width in log terms (≈ 2.9 %) is the
# smallest per-trip spread the CUSUM standardises by. Why a floor: GNSS errors cluster
# by route and weather, so trips are not independent, and a CUSUM with k = 0.5, h = 5
# on independent unit-variance data alarms on average every ~470 trips — a per-trip
# MAD alone (≈ 1.2 % in the simulator) would make most clean meters alarm within the
# 60 days (~1200 trips) a meter is watched. With the floor a trip at the edge of the
# ordinary GNSS band is one σ, and a +5 % step still alarms within a few trips.
GNSS_BAND_PCT = (-0.4, 5.5)
GNSS_SIGMA_FLOOR = (math.log1p(GNSS_BAND_PCT[1] / 100) - math.log1p(GNSS_BAND_PCT[0] / 100)) / 2


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

    Every meter shares the urban GNSS bias (−0.4 … +5.5 %, Kang et al. 2020), so subtracting
    this median leaves each meter's own distance error.
    """
    pooled = _pooled_tail(ratios_by_meter, window)
    return float(np.median(pooled)) if len(pooled) else None


def fleet_sigma(ratios_by_meter: Mapping[str, Floats], window: int) -> float:
    """The per-trip spread the CUSUM standardises by: robust fleet spread, floored.

    1.4826·MAD of the pooled log-ratios (per-trip GNSS scatter plus the spread of the
    meters' own biases; unmoved by tampered meters while they are few), but never below
    `GNSS_SIGMA_FLOOR`, half the width of the urban GNSS error band (see there why).
    """
    spread = robust_sigma(_pooled_tail(ratios_by_meter, window))
    return max(spread, GNSS_SIGMA_FLOOR) if math.isfinite(spread) else GNSS_SIGMA_FLOOR


# ------------------------------------------------------------------- per-meter bias


def log_to_pct(log_value: float) -> float:
    """A log-scale error → percent, positive when the meter over-registers."""
    return 100.0 * math.expm1(log_value)


@dataclass(frozen=True)
class Bias:
    """A meter's distance error against the fleet (evidence of docs/decisions.md)."""

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
        error_pct=log_to_pct(delta),
        error_ci_pct=(log_to_pct(delta - z * se), log_to_pct(delta + z * se)),
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


def band_text(low: float, high: float, digits: int | None = None) -> str:
    """A band of percentages in words: "-3 % to +0.5 %" (no brackets in a reason)."""
    if digits is None:
        return f"{low:+g} % to {high:+g} %"
    return f"{low:+.{digits}f} % to {high:+.{digits}f} %"


def outside_why(bias: Bias, rule: DistanceRule) -> str:
    """Why a meter in the `outside` zone is there, in words for its reason."""
    low, high = bias.error_ci_pct
    band = band_text(rule.guard_low_pct, rule.guard_high_pct)
    if rule.guard_band_on == "estimate":
        return f"outside the guard band {band}"
    if low > rule.guard_high_pct or high < rule.guard_low_pct:
        return f"outside the guard band {band} with its whole interval"
    return (
        f"beyond the JJG 517 limit {band_text(rule.limit_low_pct, rule.limit_high_pct)} by the "
        f"estimate, though not with confidence, so outside the guard band {band}"
    )


def extendable(findings: Iterable[Finding]) -> bool:
    """Whether a meter's findings allow a period extension.

    Only on evidence (δ inside the guard band, nothing else found): a
    meter with too few trips is `unknown` and keeps its due date, and one whose δ is
    outside the band with an interval reaching back inside (`unproven`) is kept, not
    extended.
    """
    found = list(findings)
    return worst_state(found) == "normal" and not any(f.reason.rule == UNPROVEN_RULE for f in found)
