"""A two-sided CUSUM on the standardised log-ratio, to catch a meter that starts running fast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from monitor.core.rulebook import DistanceRule

Floats = NDArray[np.float64]

# Not in rules.yaml: standardised log-ratios are winsorised at ±3 before the CUSUM so
# that one gross trip (a GNSS track with a gap) adds at most 3 − k = 2.5 < h and it
# takes three in a row to alarm; scattered gross trips have their own rule
# (≥ gross_trips_per_month in 30 days).
CUSUM_Z_CLIP = 3.0


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
