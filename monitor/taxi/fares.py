"""Fares recomputed from the tariff in force at each trip's end, and their summary."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import numpy as np

from monitor.core.clock import ms_to_datetime
from monitor.core.rulebook import FareRule
from monitor.taxi.tariff import Tariff, TariffBook, fare_decimal, round_half_up
from monitor.taxi.trips import Trip

# Not in rules.yaml: fare mismatches are "systematic" only when at least this share of
# them go the same way (all overcharges, or all undercharges): a tamper or wrong tariff
# pushes one way, data glitches scatter both ways.
FARE_ONE_SIGN_SHARE = 0.8


@dataclass(frozen=True)
class FareCheck:
    """One trip's fare against the tariff that should have priced it."""

    trip_id: str
    end_ms: int
    checked: bool  # False when no tariff was in force or the trip cannot be priced
    reported_cny: float
    expected_cny: float | None = None  # the charged fare the tariff gives
    expected_raw_cny: float | None = None  # the unrounded fare F of docs/mqtt.md
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
