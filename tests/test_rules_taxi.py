"""Taxi fare meter rules: each one on data made to trip it or not (docs/metrology.md)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.clock import ms_to_datetime
from monitor.core.decision import Finding, Stamp, decide_meter
from monitor.core.ports import Columns, MeterPoint, Series
from monitor.core.rulebook import FareRule, TaxiRules, load_rules
from monitor.taxi.cusum import CUSUM_Z_CLIP, Cusum, cusum, cusum_reference
from monitor.taxi.distance import (
    GNSS_SIGMA_FLOOR,
    Bias,
    bias_zone,
    distance_bias,
    extendable,
    fleet_median,
    fleet_sigma,
    log_ratios,
    robust_sigma,
)
from monitor.taxi.fares import FareCache, fare_check, fare_summary
from monitor.taxi.findings import taxi_findings
from monitor.taxi.rollout import applied_at
from monitor.taxi.seals import (
    HEARTBEAT_FIELDS,
    seal_findings,
    telling_heartbeats,
    telling_mask,
    telling_points,
)
from monitor.taxi.tariff import (
    SHANGHAI_2022,
    Tariff,
    TariffBook,
    charged_fare_cny,
    default_tariff_book,
    fare_decimal,
    round_half_up,
)
from monitor.taxi.trips import Trip, WorkOrder, trips_from_points

RULES = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml").rules.taxi
DIST = RULES.distance
CST = timezone(timedelta(hours=8))
SH = Tariff.model_validate(SHANGHAI_2022)
BOOK = default_tariff_book()
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


T0 = ms(datetime(2026, 3, 1, 8, 0, tzinfo=CST))


def trip(
    i: int,
    meter_km: float,
    gps_km: float | None,
    end_ms: int | None = None,
    fare: float | None = None,
    wait_s: float | None = None,
    version: str = "SH-2022",
) -> Trip:
    """A trip ending at `end_ms` (default: one every 30 minutes from T0), fare per SH-2022."""
    end = T0 + i * 30 * MIN if end_ms is None else end_ms
    if fare is None:
        fare = charged_fare_cny(SH, meter_km, wait_s or 0.0, ms_to_datetime(end))
    return Trip(f"t{i}", end - 20 * MIN, end, meter_km, fare, version, gps_km, wait_s)


def trips_from_logs(logs: np.ndarray, gps_km: float = 10.0, start: int = 0) -> list[Trip]:
    """Trips whose ln(meter_km / gps_km) are `logs`, with fares consistent with SH-2022."""
    return [trip(start + i, gps_km * math.exp(r), gps_km) for i, r in enumerate(logs.tolist())]


def noisy(bias_pct: float, n: int, sd_pct: float = 1.0, seed: int = 0) -> np.ndarray:
    """Log-ratios of a meter with a constant error against a fleet median of 0."""
    rng = np.random.default_rng(seed)
    return math.log1p(bias_pct / 100) + rng.normal(0.0, sd_pct / 100, n)


def simulated_meter(rng: np.random.Generator, n: int, noise: str, bias: float = 0.0) -> np.ndarray:
    """Log-ratios of n usable trips of one meter with the urban GNSS error of docs/metrology.md.

    `clipnorm` is the project simulator's model (fleet bias +1.5 %, per-trip scatter
    1.2 %, clipped to −0.4 … +5.5 %); `uniform` spreads every trip over the whole band.
    Distances are rounded to 0.01 km as meters and GNSS tracks report them.
    """
    km = np.clip(rng.lognormal(math.log(7.0), 0.65, n), 3.0, 80.0)
    if noise == "clipnorm":
        gnss = np.clip(0.015 + rng.normal(0.0, 0.012, n), -0.004, 0.055)
    else:
        gnss = rng.uniform(-0.004, 0.055, n)
    return np.log(np.round(km * (1 + bias), 2) / np.round(km * (1 + gnss), 2))


def rules_of(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.state, f.reason.rule) for f in findings]


def judge(
    trips: list[Trip],
    fleet_median: float | None = 0.0,
    status: list[MeterPoint] | None = None,
    events: list[MeterPoint] | None = None,
    work_orders: list[WorkOrder] | None = None,
    as_of: int | None = None,
    rules: TaxiRules = RULES,
) -> tuple[list[Finding], dict[str, Any]]:
    return taxi_findings(
        "T1",
        trips,
        fleet_median,
        None,
        status or [],
        events or [],
        work_orders or [],
        BOOK,
        rules,
        as_of if as_of is not None else T0 + 365 * DAY,
    )


def decision(findings: list[Finding], evidence: dict[str, Any]) -> tuple[str, str]:
    d = decide_meter("T1", "taxi", findings, date(2026, 12, 1), None, evidence, Stamp("x", "r"))
    return d.decision, d.state


# ---------------------------------------------------------------- trips and ratios


def test_trips_from_points_sorts_dedupes_and_reads_absent_fields() -> None:
    def point(trip_id: str, end: int, **values: Any) -> MeterPoint:
        body = {"trip_id": trip_id, "meter_km": 5.0, "fare_cny": 20.0, "tariff_version": "SH-2022"}
        return MeterPoint("T1", end, {**body, **values})

    points = [
        point("b", T0 + 2 * HOUR, gps_km=5.1, start_ts=T0 + HOUR, wait_s=60.0),
        point("a", T0 + HOUR, gps_km=float("nan")),
        point("b", T0 + 2 * HOUR, gps_km=5.1, start_ts=T0 + HOUR, wait_s=60.0),  # re-sent
        MeterPoint("T1", T0, {"trip_id": "broken"}),  # no distance, no fare: not a trip
    ]
    trips = trips_from_points(points)
    assert [t.trip_id for t in trips] == ["a", "b"]
    assert trips[0].gps_km is None and trips[0].wait_s is None and trips[0].start_ms == T0 + HOUR
    assert trips[1] == Trip("b", T0 + HOUR, T0 + 2 * HOUR, 5.0, 20.0, "SH-2022", 5.1, 60.0)


def test_log_ratios_count_what_they_leave_out() -> None:
    trips = [
        trip(0, 10.0, 10.0),
        trip(1, 10.0, None),  # no GNSS: counted, not guessed
        trip(2, 2.0, 2.0),  # shorter than 3 km by GNSS
        trip(3, 0.0, 8.0),  # meter registered nothing
        trip(4, 11.0, 10.0),  # ρ = 1.10: suspect
        trip(5, 13.0, 10.0),  # ρ = 1.30: gross (and suspect)
        trip(6, 15.0, 10.0),  # ρ = 1.5
    ]
    r = log_ratios(trips, DIST)
    assert r.n_trips == 7 and r.n_usable == 4
    assert (r.n_without_gps, r.n_short, r.n_zero_meter) == (1, 1, 1)
    np.testing.assert_allclose(r.log_ratio, np.log([1.0, 1.1, 1.3, 1.5]))
    assert r.end_ms.tolist() == [trips[i].end_ms for i in (0, 4, 5, 6)]
    assert r.suspect_end_ms == [trips[i].end_ms for i in (4, 5, 6)]
    assert r.gross_end_ms == [trips[i].end_ms for i in (5, 6)]


def test_fleet_median_uses_each_meters_last_window() -> None:
    ratios = {"a": np.array([9.0, 9.0, 0.1, 0.2]), "b": np.array([0.3]), "c": np.array([])}
    assert fleet_median(ratios, 2) == pytest.approx(0.2)
    assert fleet_median({}, 2) is None
    assert fleet_median({"c": np.array([])}, 2) is None


def test_fleet_sigma_is_robust_and_floored() -> None:
    rng = np.random.default_rng(1)
    wide = {str(i): rng.normal(0.0, 0.05, 100) for i in range(20)}
    wide["tampered"] = np.full(100, math.log(1.5))  # one meter of outliers moves it little
    assert fleet_sigma(wide, 100) == pytest.approx(0.05, rel=0.1)
    narrow = {str(i): rng.normal(0.0, 0.01, 100) for i in range(20)}
    assert fleet_sigma(narrow, 100) == GNSS_SIGMA_FLOOR
    assert fleet_sigma({}, 100) == GNSS_SIGMA_FLOOR
    # half the width of the −0.4 … +5.5 % urban GNSS band, in log terms
    assert pytest.approx((math.log(1.055) - math.log(0.996)) / 2) == GNSS_SIGMA_FLOOR


# --------------------------------------------------------------------------- bias


def test_bias_is_median_minus_fleet_with_a_median_standard_error() -> None:
    logs = noisy(0.3, 400, sd_pct=1.0, seed=3) + 0.02  # fleet GNSS offset 2 %, cancelled
    bias = distance_bias(logs, 0.02, DIST)
    assert bias is not None and bias.n_trips == DIST.window_trips  # only the last 100
    recent = logs[-100:]
    assert bias.delta_log == pytest.approx(float(np.median(recent)) - 0.02)
    assert bias.error_pct == pytest.approx(100 * math.expm1(bias.delta_log))
    assert bias.sigma_log == pytest.approx(0.01, rel=0.25)
    assert bias.se_log == pytest.approx(1.2533 * bias.sigma_log / 10, rel=1e-3)
    low, high = bias.error_ci_pct
    assert low < bias.error_pct < high
    assert high - low == pytest.approx(2 * 1.96 * 100 * bias.se_log, rel=0.01)
    assert distance_bias(logs[: DIST.min_trips - 1], 0.02, DIST) is None


@pytest.mark.parametrize(
    ("bias_pct", "sd_pct", "expected"),
    [
        (0.0, 1.0, ("keep", "normal", "taxi.distance.bias")),
        (-2.5, 1.0, ("keep", "normal", "taxi.distance.bias")),  # the band is asymmetric
        (0.8, 0.5, ("resample", "suspect", "taxi.distance.guard_band")),
        (-3.5, 0.5, ("resample", "suspect", "taxi.distance.guard_band")),
        (3.0, 1.0, ("replace", "faulty", "taxi.distance.limit")),
        (-6.0, 1.0, ("replace", "faulty", "taxi.distance.limit")),
        # beyond +1 % but the interval reaches back inside the limit: not proven → suspect
        (1.3, 5.0, ("resample", "suspect", "taxi.distance.guard_band")),
    ],
)
def test_bias_decisions(bias_pct: float, sd_pct: float, expected: tuple[str, str, str]) -> None:
    logs = noisy(bias_pct, 100, sd_pct, seed=11)
    findings, evidence = judge(trips_from_logs(logs))
    action, state = decision(findings, evidence)
    distance = [f for f in findings if f.reason.rule.startswith("taxi.distance")]
    assert (action, state, distance[0].reason.rule) == expected
    assert evidence["error_pct"] == pytest.approx(bias_pct, abs=3 * sd_pct * 1.25 / 10 + 0.05)
    low, high = evidence["error_ci_pct"]
    assert low <= evidence["error_pct"] <= high
    assert evidence["n_trips"] == 100
    if state == "faulty":
        assert high < DIST.limit_low_pct or low > DIST.limit_high_pct


def spread_logs(bias_pct: float, sd_pct: float, n: int = 100, seed: int = 1) -> np.ndarray:
    """n log-ratios with median exactly ln(1 + bias) and a normal spread of sd_pct (no luck)."""
    unit = NormalDist()
    z = np.array([unit.inv_cdf((i + 0.5) / n) for i in range(n)])
    logs = math.log1p(bias_pct / 100) + z * sd_pct / 100
    return np.random.default_rng(seed).permutation(logs)  # in no particular order


def a_bias(error_pct: float, low: float, high: float) -> Bias:
    return Bias(error_pct, (low, high), 100, math.log1p(error_pct / 100), 0.0, 0.0)


@pytest.mark.parametrize(
    ("error", "interval", "zone"),
    [
        (0.3, (-0.1, 0.7), "inside"),  # δ inside; the interval may poke out
        (0.5, (0.1, 0.9), "inside"),  # the band's edge belongs to the band
        (0.7, (0.3, 1.1), "unproven"),  # δ out, the interval reaches back inside
        (0.9, (0.5, 1.3), "unproven"),  # touching the edge is reaching it
        (0.8, (0.51, 1.09), "outside"),  # the whole interval above +0.5 %
        (1.2, (-0.1, 2.5), "outside"),  # δ beyond +1 %: never kept for being noisy
        (1.4, (1.01, 1.79), "beyond_limit"),
        (-3.4, (-4.4, -2.4), "unproven"),  # the low side alike
        (-3.4, (-3.8, -3.01), "outside"),
        (-4.2, (-6.0, -2.5), "outside"),
        (-5.0, (-6.0, -4.01), "beyond_limit"),
    ],
)
def test_the_guard_band_is_judged_on_the_interval(
    error: float, interval: tuple[float, float], zone: str
) -> None:
    assert bias_zone(a_bias(error, *interval), DIST) == zone
    # the rules before 2026.2 judged δ alone
    old = {"inside": "inside", "beyond_limit": "beyond_limit"}.get(zone, "outside")
    assert bias_zone(a_bias(error, *interval), ESTIMATE.distance) == old


ESTIMATE = RULES.model_copy(
    update={"distance": DIST.model_copy(update={"guard_band_on": "estimate"})}
)


def test_a_meter_just_outside_the_band_with_a_wide_interval_is_kept_not_extended() -> None:
    # δ = +0.7 %, per-trip spread 2 %: se ≈ 0.25 pp, interval ≈ [+0.2, +1.2] %
    trips = trips_from_logs(spread_logs(0.7, 2.0))
    findings, evidence = judge(trips)
    assert evidence["error_pct"] == pytest.approx(0.7, abs=1e-6)
    low, high = evidence["error_ci_pct"]
    assert low < DIST.guard_high_pct < evidence["error_pct"] < DIST.limit_high_pct < high
    assert evidence["distance_zone"] == "unproven"
    assert rules_of(findings) == [("normal", "taxi.distance.unproven")]
    reason = findings[0].reason
    assert (reason.value, reason.threshold) == (0.7, [DIST.guard_low_pct, DIST.guard_high_pct])
    assert f"95 % interval {low:+.2f} % to {high:+.2f} %, 100 trips" in reason.detail
    assert "not extended" in reason.detail
    assert decision(findings, evidence) == ("keep", "normal")
    assert not extendable(findings)
    # the same meter under the old reading of the band (δ alone) was sent to verification
    old = judge(trips, rules=ESTIMATE)
    assert rules_of(old[0]) == [("suspect", "taxi.distance.guard_band")]
    assert decision(*old) == ("resample", "suspect")


def test_a_meter_whose_interval_clears_the_band_is_sent_to_verification() -> None:
    # δ = +0.8 %, per-trip spread 0.5 %: se ≈ 0.06 pp, interval ≈ [+0.68, +0.92] %
    findings, evidence = judge(trips_from_logs(spread_logs(0.8, 0.5)))
    low, high = evidence["error_ci_pct"]
    assert DIST.guard_high_pct < low < evidence["error_pct"] < high < DIST.limit_high_pct
    assert evidence["distance_zone"] == "outside"
    assert rules_of(findings) == [("suspect", "taxi.distance.guard_band")]
    reason = findings[0].reason
    assert (reason.value, reason.threshold) == (0.8, [DIST.guard_low_pct, DIST.guard_high_pct])
    assert "with its whole interval" in reason.detail
    assert f"{low:+.2f} % to {high:+.2f} %" in reason.detail
    assert decision(findings, evidence) == ("resample", "suspect")
    assert not extendable(findings)  # suspect: only a normal meter is extended


def test_an_estimate_beyond_the_limit_is_verified_however_noisy() -> None:
    # δ = +1.2 %, per-trip spread 5 %: the interval reaches down into the band
    findings, evidence = judge(trips_from_logs(spread_logs(1.2, 5.0)))
    low, high = evidence["error_ci_pct"]
    assert low < DIST.guard_high_pct and high > DIST.limit_high_pct
    assert rules_of(findings)[0] == ("suspect", "taxi.distance.guard_band")
    assert "beyond the JJG 517 limit -4 % to +1 % by the estimate" in findings[0].reason.detail
    assert decision(findings, evidence) == ("resample", "suspect")


def test_a_low_meter_just_outside_the_band_is_kept_too() -> None:
    findings, evidence = judge(trips_from_logs(spread_logs(-3.3, 2.0)))
    low, high = evidence["error_ci_pct"]
    assert DIST.limit_low_pct < low < evidence["error_pct"] < DIST.guard_low_pct < high
    assert rules_of(findings) == [("normal", "taxi.distance.unproven")]
    assert decision(findings, evidence) == ("keep", "normal")


def test_the_interval_follows_the_rules_confidence() -> None:
    logs = spread_logs(0.0, 1.0)
    wide = distance_bias(logs, 0.0, DIST.model_copy(update={"confidence": 0.99}))
    usual = distance_bias(logs, 0.0, DIST)
    assert wide is not None and usual is not None
    assert usual.error_ci_pct[1] == pytest.approx(100 * math.expm1(1.959964 * usual.se_log))
    assert wide.error_ci_pct[1] == pytest.approx(100 * math.expm1(2.575829 * usual.se_log))


def test_too_few_usable_trips_is_unknown_and_says_why() -> None:
    logs = noisy(0.0, 25, seed=2)
    trips = trips_from_logs(logs)
    trips += [trip(100 + i, 10.0, None) for i in range(40)]  # no GNSS distance
    trips += [trip(200 + i, 2.5, 2.4) for i in range(10)]  # short
    findings, evidence = judge(trips)
    assert rules_of(findings) == [("unknown", "taxi.distance.min_trips")]
    reason = findings[0].reason
    assert (reason.value, reason.threshold) == (25, DIST.min_trips)
    assert "40 without GNSS" in reason.detail and "10 short" in reason.detail
    assert evidence["n_trips_without_gps"] == 40 and evidence["n_trips_short"] == 10
    assert evidence["error_pct"] is None and evidence["n_trips"] == 25
    assert decision(findings, evidence) == ("keep", "unknown")


def test_no_fleet_reference_is_unknown() -> None:
    findings, _ = judge(trips_from_logs(noisy(0.0, 100)), fleet_median=None)
    assert rules_of(findings) == [("unknown", "taxi.distance.fleet")]


def test_gross_trips_in_the_last_30_days() -> None:
    clean = trips_from_logs(noisy(0.0, 100, seed=4))
    as_of = clean[-1].end_ms
    gross = [trip(500 + i, 15.0, 10.0, end_ms=as_of - d * DAY) for i, d in enumerate((1, 5, 20))]
    findings, evidence = judge(clean + gross, as_of=as_of)
    assert ("suspect", "taxi.distance.gross_trips") in rules_of(findings)
    assert evidence["gross_trips_30d"] == 3 and evidence["suspect_trips"] == 3
    assert decision(findings, evidence)[0] == "resample"
    # the same three trips, one of them 31 days back: below the monthly count
    old = [*gross[:2], trip(502, 15.0, 10.0, end_ms=as_of - 31 * DAY)]
    findings, evidence = judge(clean + old, as_of=as_of)
    assert ("suspect", "taxi.distance.gross_trips") not in rules_of(findings)
    assert evidence["gross_trips_30d"] == 2 and evidence["gross_trips"] == 3


def test_data_after_as_of_is_ignored() -> None:
    clean = trips_from_logs(noisy(0.0, 100, seed=5))
    later = trips_from_logs(noisy(10.0, 100, seed=6), start=1000)  # a tamper after as_of
    as_of = clean[-1].end_ms
    findings, evidence = judge(clean + later, as_of=as_of)
    assert decision(findings, evidence) == ("keep", "normal")
    assert evidence["n_trips_total"] == 100


# -------------------------------------------------------------------------- CUSUM


def test_cusum_catches_a_five_percent_step_after_200_clean_trips() -> None:
    rng = np.random.default_rng(20)
    fleet = {str(i): simulated_meter(rng, 300, "clipnorm") for i in range(50)}
    median = fleet_median(fleet, DIST.window_trips)
    sigma = fleet_sigma(fleet, DIST.window_trips)
    assert median is not None
    before = simulated_meter(rng, 200, "clipnorm")
    after = simulated_meter(rng, 200, "clipnorm", bias=0.05)
    logs = np.concatenate([before, after])
    result = cusum(logs, cusum_reference(logs, median, DIST), sigma, DIST)
    assert result.alarm and result.direction == "up"
    assert result.alarm_index is not None and 200 <= result.alarm_index < 215
    assert result.peak > DIST.cusum_h
    # through the combined rules: the bias over the last 100 trips says so too
    findings, evidence = judge(trips_from_logs(logs), fleet_median=median)
    assert ("suspect", "taxi.distance.cusum") in rules_of(findings)
    assert evidence["cusum"]["alarm_index"] == result.alarm_index
    assert evidence["cusum"]["direction"] == "up" and evidence["cusum"]["alarm_ts"]


def test_cusum_catches_a_downward_step() -> None:
    logs = np.concatenate([np.zeros(200), np.full(50, math.log(0.95))])
    result = cusum(logs, 0.0, GNSS_SIGMA_FLOOR, DIST)
    assert result.alarm and result.direction == "down" and result.alarm_index == 203


def test_one_gross_trip_does_not_alarm_the_cusum_alone() -> None:
    logs = np.zeros(300)
    logs[150] = math.log(1.8)  # a GNSS track with a gap
    result = cusum(logs, 0.0, GNSS_SIGMA_FLOOR, DIST)
    assert not result.alarm and result.peak == pytest.approx(CUSUM_Z_CLIP - DIST.cusum_k)
    logs[151] = math.log(1.8)  # two in a row reach h exactly, which is not beyond it
    assert not cusum(logs, 0.0, GNSS_SIGMA_FLOOR, DIST).alarm
    logs[152] = math.log(1.8)  # three in a row alarm
    result = cusum(logs, 0.0, GNSS_SIGMA_FLOOR, DIST)
    assert result.alarm and result.alarm_index == 152


def test_cusum_reference_follows_the_meter_inside_the_guard_band() -> None:
    # a meter that has sat at −2 % all along (inside the −3 % guard band) has not changed
    logs = noisy(-2.0, 1200, sd_pct=1.2, seed=8)
    assert cusum(logs, 0.0, GNSS_SIGMA_FLOOR, DIST).alarm  # against the bare fleet
    reference = cusum_reference(logs, 0.0, DIST)
    assert reference == pytest.approx(math.log(0.98), abs=0.003)
    assert not cusum(logs, reference, GNSS_SIGMA_FLOOR, DIST).alarm
    findings, evidence = judge(trips_from_logs(logs))
    assert decision(findings, evidence) == ("keep", "normal")
    # one that starts outside the band is measured from the band's edge
    assert cusum_reference(noisy(5.0, 100), 0.0, DIST) == pytest.approx(math.log(1.005))
    assert cusum_reference(noisy(0.0, DIST.min_trips - 1), 0.01, DIST) == 0.01


@pytest.mark.parametrize("noise", ["clipnorm", "uniform"])
def test_cusum_false_alarms_on_clean_meters_over_60_days(noise: str) -> None:
    """200 clean meters × 1200 usable trips (~60 days) with the urban GNSS noise of docs/metrology.md.

    Measured: seed 60 gives 0 (clipnorm) and 1 (uniform) alarms of 200; over ten seeds
    0 / 2000 and 4 / 2000 (0.2 %). Against the bare fleet median with σ = 1.4826·MAD
    alone (no GNSS floor) the same seeds give 1364 / 2000 and 82 / 2000.
    """
    rng = np.random.default_rng(60)
    fleet = {str(i): simulated_meter(rng, 1200, noise) for i in range(200)}
    median = fleet_median(fleet, DIST.window_trips)
    sigma = fleet_sigma(fleet, DIST.window_trips)
    assert median is not None
    alarms = sum(
        cusum(logs, cusum_reference(logs, median, DIST), sigma, DIST).alarm
        for logs in fleet.values()
    )
    assert alarms <= 2, f"{alarms} of 200 clean meters alarmed"


def test_per_trip_mad_alone_would_alarm_on_most_clean_meters() -> None:
    # Why fleet_sigma has a floor: k = 0.5, h = 5 on unit-variance trips alarms every
    # ~470 trips on average, well inside 60 days.
    rng = np.random.default_rng(61)
    fleet = {str(i): simulated_meter(rng, 1200, "clipnorm") for i in range(50)}
    median = fleet_median(fleet, DIST.window_trips)
    assert median is not None
    raw = robust_sigma(np.concatenate(list(fleet.values())))
    alarms = sum(cusum(logs, median, raw, DIST).alarm for logs in fleet.values())
    assert alarms > 25


def test_cusum_refuses_a_bad_sigma() -> None:
    with pytest.raises(ValueError):
        cusum(np.zeros(3), 0.0, 0.0, DIST)


# -------------------------------------------------------------------------- fares

NOON = ms(datetime(2026, 3, 2, 12, 0, tzinfo=CST))
NIGHT = ms(datetime(2026, 3, 2, 23, 30, tzinfo=CST))


def fare_trip(
    km: float, fare: float, end: int = NOON, wait_s: float | None = None, version: str = "SH-2022"
) -> Trip:
    return Trip("f", end - 30 * MIN, end, km, fare, version, km, wait_s)


@pytest.mark.parametrize(
    ("km", "wait_s", "end", "raw", "charged", "accepted", "refused"),
    [
        # 14 + 2.7·7 = 32.9 → 33; nothing rounds to 32 or 34; the displayed 32.9 is fine
        (10.0, None, NOON, 32.9, 33.0, [33.0, 32.9, 33.0], [32.0, 34.0, 33.1]),
        # 14 + 2.7·3.13 = 22.451 → 22, but 22.451 + 0.1 rounds to 23: a rounding difference
        (6.13, None, NOON, 22.451, 22.0, [22.0, 23.0], [21.0, 24.0]),
        # waiting: 600 s = 2 full 4-minute blocks = 3 km: 14 + 16.2 + 8.1 = 38.3 → 38
        (9.0, 600.0, NOON, 38.3, 38.0, [38.0], [37.0, 39.0]),
        # beyond 15 km +50 %: 14 + 2.7·12 + 2.7·1.5·5 = 66.65 → 67
        (20.0, None, NOON, 66.65, 67.0, [67.0], [66.0, 68.0, 73.0]),
        # night (ends 23:30): 18 + 3.5·12 + 3.5·1.5·5 = 86.25 → 86
        (20.0, None, NIGHT, 86.25, 86.0, [86.0], [85.0, 87.0, 67.0]),
        # 60 km: 14 + 32.4 + 182.25 = 228.65 → 229; 0.1 % of it (0.229) admits 228
        (60.0, None, NOON, 228.65, 229.0, [228.0, 229.0], [227.0, 230.0]),
    ],
)
def test_fare_check_hand_computed_sh2022(
    km: float,
    wait_s: float | None,
    end: int,
    raw: float,
    charged: float,
    accepted: list[float],
    refused: list[float],
) -> None:
    for fare in accepted + refused:
        check = fare_check(fare_trip(km, fare, end, wait_s), BOOK, RULES.fare)
        assert check.checked and check.version_in_force == "SH-2022"
        assert check.expected_raw_cny == pytest.approx(raw, abs=1e-9)
        assert check.expected_cny == charged
        assert check.diff_cny == pytest.approx(fare - charged)
        assert check.mismatch is (fare in refused), fare


def test_rounding_allowance_is_exactly_what_the_tolerance_reaches() -> None:
    # 228.65 ± 0.1 only (no relative part) reaches 228.55 … 228.75: all round to 229
    strict = FareRule(
        description="fares without a relative tolerance", source="test", tolerance_rel=0
    )
    check = fare_check(fare_trip(60.0, 228.0), BOOK, strict)
    assert check.mismatch and check.allowed_cny == (229.0, 229.0)
    # F = 27.5 exactly (5 km, 2 waiting blocks): charged 28, 27 within the display step
    check = fare_check(fare_trip(5.0, 27.0, wait_s=500.0), BOOK, RULES.fare)
    assert check.expected_raw_cny == 27.5 and check.expected_cny == 28.0
    assert not check.mismatch and check.allowed_cny == (27.0, 28.0)


def test_ten_percent_overcharge_is_flagged_even_on_the_flag_fall() -> None:
    # 3 km: 14 CNY; +10 % = 15.4 → 15, a single yuan, but no rounding explains it
    check = fare_check(fare_trip(3.0, 15.0), BOOK, RULES.fare)
    assert check.mismatch and check.diff_cny == 1.0
    trips = [fare_trip(km, 0.0) for km in np.linspace(3.0, 30.0, 40).round(2).tolist()]
    checks = []
    for i, t in enumerate(trips):
        honest = charged_fare_cny(SH, t.meter_km, 0.0, ms_to_datetime(t.end_ms))
        raw = float(fare_decimal(SH, t.meter_km, 0.0, ms_to_datetime(t.end_ms)))
        over = round_half_up(raw * 1.1, 1.0)
        fare = over if i % 2 == 0 else honest  # every other trip overcharged by 10 %
        checks.append(fare_check(replace(t, trip_id=f"f{i}", fare_cny=fare), BOOK, RULES.fare))
    summary = fare_summary(checks, RULES.fare)
    assert summary.n_checked == 40 and summary.n_mismatch == 20
    assert summary.share == 0.5 and summary.systematic and summary.mean_diff_cny > 0


def test_scattered_mismatches_are_not_systematic() -> None:
    checks = [fare_check(fare_trip(10.0, 33.0), BOOK, RULES.fare) for _ in range(6)]
    checks += [fare_check(fare_trip(10.0, f), BOOK, RULES.fare) for f in (30.0, 36.0)]
    summary = fare_summary(checks, RULES.fare)
    assert (summary.n_mismatch, summary.share) == (2, 0.25)
    assert not summary.systematic and summary.mean_diff_cny == 0.0
    assert fare_summary([], RULES.fare).share == 0.0


def test_tariff_version_mismatch_is_reported_and_repriced() -> None:
    new_from = datetime(2026, 3, 1, 0, 0, tzinfo=CST)
    body = {**SHANGHAI_2022, "effective_from": new_from.isoformat()}
    body["day"] = {**SHANGHAI_2022["day"], "per_km": 3.0}
    book = BOOK.with_tariff("SH-2026", Tariff.model_validate(body))
    grace = int(RULES.tariff.deadline_h * HOUR)
    # priced under the old tariff five days after the new one took effect
    late = fare_trip(10.0, 33.0, end=ms(new_from) + 5 * DAY + 12 * HOUR)  # noon
    check = fare_check(late, book, RULES.fare, grace_ms=grace)
    assert check.version_in_force == "SH-2026" and check.version_mismatch
    assert check.expected_cny == 35.0 and check.mismatch  # 14 + 3.0·7 = 35
    # the same within the 24 h rollout deadline: checked against the version it names
    early = fare_trip(10.0, 33.0, end=ms(new_from) + 10 * HOUR)
    check = fare_check(early, book, RULES.fare, grace_ms=grace)
    assert check.in_grace and not check.version_mismatch and not check.mismatch
    assert check.version_applied == "SH-2022"
    # a version nobody knows is not applied, whatever the fare
    check = fare_check(fare_trip(10.0, 33.0, version="SH-2019"), BOOK, RULES.fare)
    assert check.version_mismatch and not check.mismatch
    # before any tariff: nothing to check against
    old = fare_trip(10.0, 33.0, end=ms(datetime(2021, 1, 1, tzinfo=CST)))
    assert not fare_check(old, BOOK, RULES.fare).checked


def test_fare_cache_answers_what_fare_check_answers_and_follows_the_tariff_book() -> None:
    new_from = datetime(2026, 3, 1, 0, 0, tzinfo=CST)
    body = {**SHANGHAI_2022, "effective_from": new_from.isoformat()}
    body["day"] = {**SHANGHAI_2022["day"], "per_km": 3.0}
    grace = int(RULES.tariff.deadline_h * HOUR)
    late = ms(new_from) + 5 * DAY + 12 * HOUR
    trips = [replace(fare_trip(10.0, 33.0, end=late + i * HOUR), trip_id=f"f{i}") for i in range(4)]
    cache = FareCache()
    first = [cache.check(t, BOOK, RULES.fare, grace) for t in trips]
    assert first == [fare_check(t, BOOK, RULES.fare, grace_ms=grace) for t in trips]
    assert not any(c.mismatch for c in first)
    # asked again, with an equal book built anew: the checks already made, not re-priced
    again = TariffBook(dict(BOOK.items()))
    assert all(
        cache.check(t, again, RULES.fare, grace) is c for t, c in zip(trips, first, strict=True)
    )
    # a rollout changes the book: every trip is priced again, under the tariff now in force
    book = BOOK.with_tariff("SH-2026", Tariff.model_validate(body))
    rolled = [cache.check(t, book, RULES.fare, grace) for t in trips]
    assert rolled == [fare_check(t, book, RULES.fare, grace_ms=grace) for t in trips]
    assert all(c.version_mismatch and c.expected_cny == 35.0 for c in rolled)
    # so does another fare rule
    strict = RULES.fare.model_copy(update={"tolerance_display_steps": 0.0})
    assert cache.check(trips[0], book, strict, grace) is not rolled[0]
    # a pass keeps what the previous pass asked for and drops the rest
    cache.new_pass()
    kept = cache.check(trips[0], book, strict, grace)
    cache.new_pass()
    assert cache.check(trips[0], book, strict, grace) is kept
    cache.new_pass()
    cache.new_pass()
    assert cache.check(trips[0], book, strict, grace) is not kept
    assert cache.check(trips[0], book, strict, grace) == kept


def test_fare_and_tariff_findings_in_the_combined_rules() -> None:
    trips = trips_from_logs(noisy(0.0, 100, seed=9))
    trips[10] = replace(trips[10], fare_cny=trips[10].fare_cny + 5)
    trips[20] = replace(trips[20], tariff_version="SH-2019")
    findings, evidence = judge(trips)
    assert ("suspect", "taxi.fare.mismatch") in rules_of(findings)
    assert ("suspect", "taxi.tariff.version") in rules_of(findings)
    assert evidence["fare_checked"] == 100 and evidence["fare_mismatches"] == 1
    assert evidence["fare_mismatch_share"] == 0.01 and not evidence["fare_systematic"]
    assert evidence["tariff_version_mismatches"] == 1
    assert decision(findings, evidence) == ("resample", "suspect")


# -------------------------------------------------------------------------- seals


def event(code: str, ts: int, meter: str = "T1") -> MeterPoint:
    return MeterPoint(meter, ts, {"code": code, "detail": None})


def beat(ts: int, seal: str = "intact", ppk: float | None = 1000.0) -> MeterPoint:
    values: dict[str, Any] = {"seal": seal, "tariff_version": "SH-2022"}
    if ppk is not None:
        values["pulses_per_km"] = ppk
    return MeterPoint("T1", ts, values)


def test_seal_event_without_work_order_is_critical() -> None:
    events = [event("seal_broken", T0), event("seal_broken", T0), event("power_loss", T0)]
    findings = seal_findings("T1", [], events, [], RULES.seal)
    assert len(findings) == 1  # the re-sent event is one event; power_loss is no seal event
    f = findings[0]
    assert (f.state, f.inspect, f.severity) == ("suspect", True, "critical")
    assert (f.reason.rule, f.reason.value) == ("taxi.seal.event", "seal_broken")
    assert f.reason.threshold == ["seal_broken", "param_changed"]
    assert "2026-03-01T00:00:00.000Z" in f.reason.detail


def test_seal_event_inside_a_work_order_is_excused_and_says_by_which() -> None:
    orders = [
        WorkOrder("T2", T0 - HOUR, T0 + HOUR, "other meter"),
        WorkOrder("T1", T0 - HOUR, T0 + HOUR, "annual verification"),
    ]
    assert orders[1].covers("T1", T0) and not orders[0].covers("T1", T0)
    assert not orders[1].covers("T1", T0 + 2 * HOUR)
    events = [event("param_changed", T0), event("seal_broken", T0 + 2 * HOUR)]
    findings = seal_findings("T1", [], events, orders, RULES.seal)
    assert [(f.state, f.severity) for f in findings] == [
        ("normal", "info"),
        ("suspect", "critical"),
    ]
    assert "annual verification" in findings[0].reason.detail
    assert not findings[0].inspect


def test_broken_seal_heartbeats_are_one_finding_per_run() -> None:
    status = [beat(T0 + i * 5 * MIN, "broken" if 3 <= i < 9 else "intact") for i in range(12)]
    findings = seal_findings("T1", status, [], [], RULES.seal)
    assert rules_of(findings) == [("suspect", "taxi.seal.heartbeat")]
    assert findings[0].reason.value == "broken" and "6 heartbeats" in findings[0].reason.detail
    # a work order over the first part; the seal is still broken after it closed
    order = WorkOrder("T1", T0, T0 + 30 * MIN, "seal replacement")
    findings = seal_findings("T1", status, [], [order], RULES.seal)
    assert [f.state for f in findings] == ["normal", "suspect"]
    assert "seal replacement" in findings[0].reason.detail


def test_pulse_constant_change_is_a_parameter_finding() -> None:
    status = [beat(T0), beat(T0 + 5 * MIN, ppk=None), beat(T0 + 10 * MIN, ppk=1100.0)]
    findings = seal_findings("T1", status, [], [], RULES.seal)
    assert rules_of(findings) == [("suspect", "taxi.param.pulses_per_km")]
    assert findings[0].reason.value == [1000.0, 1100.0] and findings[0].severity == "critical"
    # a work order between the two heartbeats explains it
    order = WorkOrder("T1", T0 + 6 * MIN, T0 + 8 * MIN, "tyre change recalibration")
    assert [f.state for f in seal_findings("T1", status, [], [order], RULES.seal)] == ["normal"]
    # the same from a numeric Series (no seal column there)
    series = Series(
        np.array([T0, T0 + 5 * MIN, T0 + 10 * MIN], dtype=np.int64),
        {"pulses_per_km": np.array([1000.0, np.nan, 1100.0])},
    )
    assert rules_of(seal_findings("T1", series, [], [], RULES.seal)) == rules_of(findings)


heartbeat_values = st.fixed_dictionaries(
    {},
    optional={
        "seal": st.sampled_from(["intact", "broken"]),
        "pulses_per_km": st.sampled_from([1000.0, 1100.0]),
        "tariff_version": st.sampled_from(["SH-2022", "SH-2026"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(heartbeat_values, st.integers(1, 12), st.booleans()), min_size=1, max_size=12
    ),
    orders=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 60)), max_size=3),
)
def test_telling_heartbeats_decide_what_every_heartbeat_decides(
    runs: list[tuple[dict[str, Any], int, bool]], orders: list[tuple[int, int]]
) -> None:
    """Runs of equal heartbeats every 5 min (some sent twice), a few work orders."""
    beats: list[MeterPoint] = []
    for values, length, resent in runs:
        for _ in range(length):
            ts = T0 + len(beats) * 5 * MIN
            beats.append(MeterPoint("T1", ts, dict(values)))
            if resent:
                beats.append(MeterPoint("T1", ts, dict(values)))
    work_orders = [WorkOrder("T1", T0 + a * MIN, T0 + (a + d) * MIN, "work") for a, d in orders]
    kept = telling_heartbeats(beats)
    assert set(map(id, kept)) <= set(map(id, beats))
    assert [b.ts_ms for b in kept] == sorted(b.ts_ms for b in kept)
    full = seal_findings("T1", beats, [], work_orders, RULES.seal)
    assert seal_findings("T1", kept, [], work_orders, RULES.seal) == full
    for version in ("SH-2022", "SH-2026"):
        assert applied_at(version, [], kept) == applied_at(version, [], beats)


def test_telling_heartbeats_keep_run_ends_and_every_broken_seal() -> None:
    intact = [beat(T0 + i * 5 * MIN) for i in range(10)]
    broken = [beat(T0 + (10 + i) * 5 * MIN, seal="broken") for i in range(4)]
    changed = [beat(T0 + (14 + i) * 5 * MIN, ppk=1100.0) for i in range(10)]
    kept = telling_heartbeats(list(reversed(intact + broken + changed)))
    assert kept == [intact[0], intact[-1], *broken, changed[0], changed[-1]]
    assert telling_heartbeats([]) == []


def as_columns(beats: list[MeterPoint], fields: tuple[str, ...]) -> Columns:
    """Heartbeats as a store's `columns` gives them: text as objects, numbers as floats."""
    values: dict[str, Any] = {}
    for name in fields:
        got = [b.values.get(name) for b in beats]
        if name == "pulses_per_km":
            values[name] = np.array([math.nan if v is None else v for v in got], dtype=float)
        else:
            values[name] = np.array(got, dtype=object)
    return Columns(np.array([b.ts_ms for b in beats], dtype=np.int64), values)


# Few values each, so runs are long and every kind of change occurs.
sparse_heartbeat = st.tuples(
    st.sampled_from([None, "intact", "broken", "opened"]),
    st.sampled_from([None, 1000.0, 1100.0, 1000]),
    st.sampled_from([None, "SH-2022", "SH-2026"]),
)


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(st.tuples(sparse_heartbeat, st.integers(1, 8)), max_size=14),
    steps=st.lists(st.integers(0, 2), min_size=120, max_size=120),
    fields=st.sampled_from(
        [
            HEARTBEAT_FIELDS,
            ("seal", "pulses_per_km"),
            ("tariff_version",),
            ("pulses_per_km", "seal", "tariff_version"),
        ]
    ),
)
def test_the_vectorised_cut_keeps_what_telling_heartbeats_keeps(
    runs: list[tuple[tuple[str | None, float | None, str | None], int]],
    steps: list[int],
    fields: tuple[str, ...],
) -> None:
    """Random heartbeat sequences (absent fields, repeated times, columns missing): the
    columnar cut keeps exactly the heartbeats `telling_heartbeats` keeps, with the same
    values, so every seal finding and rollout answer is the same too."""
    beats: list[MeterPoint] = []
    ts = T0
    clash = False  # two heartbeats of the same time that differ (no store keeps both)
    for (seal, ppk, version), length in runs:
        for i in range(length):
            step = steps[len(beats) % len(steps)]  # 0: a repeated time
            clash = clash or (step == 0 and i == 0 and bool(beats))
            ts += 5 * MIN * step
            values = {"seal": seal, "pulses_per_km": ppk, "tariff_version": version}
            beats.append(MeterPoint("T1", ts, {k: values[k] for k in fields}))
    expected = [
        MeterPoint("T1", b.ts_ms, {k: v for k, v in b.values.items() if v is not None})
        for b in telling_heartbeats(beats)
    ]
    got = telling_points("T1", as_columns(beats, fields))
    assert got == expected
    assert all(type(v) is float for b in got for k, v in b.values.items() if k == "pulses_per_km")
    if not clash:  # then also what every heartbeat says (see the test above)
        assert seal_findings("T1", got, [], [], RULES.seal) == seal_findings(
            "T1", beats, [], [], RULES.seal
        )
        for version in ("SH-2022", "SH-2026"):
            assert applied_at(version, [], got) == applied_at(version, [], beats)
    # out of time order, it is put in order first (as `telling_heartbeats` does)
    backwards = list(reversed(beats))
    assert telling_points("T1", as_columns(backwards, fields)) == [
        MeterPoint("T1", b.ts_ms, {k: v for k, v in b.values.items() if v is not None})
        for b in telling_heartbeats(backwards)
    ]


def test_the_vectorised_cut_keeps_run_ends_and_every_broken_seal() -> None:
    intact = [beat(T0 + i * 5 * MIN) for i in range(10)]
    broken = [beat(T0 + (10 + i) * 5 * MIN, seal="broken") for i in range(4)]
    changed = [beat(T0 + (14 + i) * 5 * MIN, ppk=1100.0) for i in range(10)]
    gone = [beat(T0 + (24 + i) * 5 * MIN, ppk=None) for i in range(3)]
    every = intact + broken + changed + gone
    mask = telling_mask(as_columns(every, HEARTBEAT_FIELDS))
    kept = [b for b, k in zip(every, mask.tolist(), strict=True) if k]
    assert kept == [intact[0], intact[-1], *broken, changed[0], changed[-1], gone[0], gone[-1]]
    assert telling_points("T1", as_columns([], HEARTBEAT_FIELDS)) == []
    assert telling_points("T1", as_columns(every[:1], ())) == [MeterPoint("T1", T0, {})]
    with pytest.raises(ValueError, match="time order"):
        telling_mask(as_columns(list(reversed(every)), HEARTBEAT_FIELDS))


def test_seal_findings_drive_the_decision() -> None:
    trips = trips_from_logs(noisy(0.0, 100, seed=12))
    as_of = trips[-1].end_ms
    findings, evidence = judge(trips, events=[event("seal_broken", as_of - HOUR)], as_of=as_of)
    assert decision(findings, evidence) == ("resample", "suspect")
    assert evidence["seal_findings"] == 1 and evidence["seal_covered"] == 0
    order = WorkOrder("T1", as_of - 2 * HOUR, as_of, "verification")
    findings, evidence = judge(
        trips, events=[event("seal_broken", as_of - HOUR)], work_orders=[order], as_of=as_of
    )
    assert decision(findings, evidence) == ("keep", "normal")
    assert evidence["seal_findings"] == 0 and evidence["seal_covered"] == 1
    # a clean meter: evidence of docs/decisions.md
    findings, evidence = judge(trips, status=[beat(as_of - HOUR)], as_of=as_of)
    assert decision(findings, evidence) == ("keep", "normal")
    for key in ("error_pct", "error_ci_pct", "n_trips", "n_trips_without_gps", "gross_trips_30d"):
        assert key in evidence
    assert evidence["cusum"]["alarm"] is False and evidence["fare_checked"] == 100


# --------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(
    b=st.floats(-0.2, 0.2),
    n=st.integers(DIST.min_trips, 250),
    seed=st.integers(0, 10_000),
)
def test_scaled_fleet_trips_give_the_scale_as_error(b: float, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gps = np.round(rng.uniform(3.0, 40.0, n), 2)
    meter = gps * np.exp(rng.normal(0.015, 0.012, n))
    fleet_trips = [
        trip(i, float(m), float(g)) for i, (m, g) in enumerate(zip(meter, gps, strict=True))
    ]
    ours = [replace(t, meter_km=t.meter_km * (1 + b)) for t in fleet_trips]
    median = fleet_median({"fleet": log_ratios(fleet_trips, DIST).log_ratio}, DIST.window_trips)
    assert median is not None
    bias = distance_bias(log_ratios(ours, DIST).log_ratio, median, DIST)
    assert bias is not None
    assert bias.error_pct == pytest.approx(100 * b, abs=1e-7)
    assert bias.error_ci_pct[0] <= bias.error_pct <= bias.error_ci_pct[1]


@settings(max_examples=100, deadline=None)
@given(
    level=st.floats(-1.0, 1.0),
    sigma=st.floats(1e-4, 1.0),
    n=st.integers(0, 500),
    wobble=st.lists(st.floats(-1.0, 1.0), max_size=50),
)
def test_cusum_never_alarms_within_k_of_the_reference(
    level: float, sigma: float, n: int, wobble: list[float]
) -> None:
    constant = cusum(np.full(n, level), level, sigma, DIST)
    assert constant == Cusum(False, None, None, 0.0)
    # anything within ±k·σ of the reference only drains the statistic
    near = level + np.array(wobble) * DIST.cusum_k * sigma
    assert not cusum(near, level, sigma, DIST).alarm
