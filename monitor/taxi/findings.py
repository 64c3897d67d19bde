"""Taxi fare meter rules combined: one meter's findings and evidence (docs/metrology.md).

Each rule module takes data and a rule block of `rules.yaml` and returns numbers or
findings; none of them reads a clock, a store or a file. The evidence per meter is

- per trip the log-ratio `ln(meter_km / gps_km)` for trips long enough to trust GNSS
  (`distance.py`);
- the meter's bias against the fleet: the median of its last trips' log-ratios minus
  the fleet median, which cancels the GNSS bias every meter shares (`distance.py`);
- a two-sided CUSUM on the standardised log-ratio to catch a change (`cusum.py`);
- every fare recomputed from the tariff in force at the trip's end (`fares.py`);
- seal and parameter events and heartbeats, excused only by an open work order
  (`seals.py`).

`taxi_findings` combines them into findings for `monitor.decide.decide_meter` and the
`taxi_findings` combines them into findings for `monitor.core.decision.decide_meter` and the
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.core.clock import DAY_MS, HOUR_MS, format_ts
from monitor.core.decision import Finding, Reason
from monitor.core.ports import MeterPoint, Series
from monitor.core.rulebook import DistanceRule, TaxiRules
from monitor.taxi.cusum import Cusum, cusum, cusum_reference
from monitor.taxi.distance import (
    GNSS_SIGMA_FLOOR,
    UNPROVEN_RULE,
    Bias,
    BiasZone,
    TripRatios,
    band_text,
    bias_zone,
    distance_bias,
    log_ratios,
    log_to_pct,
    outside_why,
)
from monitor.taxi.fares import FareCache, FareSummary, fare_check, fare_summary
from monitor.taxi.seals import seal_findings
from monitor.taxi.tariff import TariffBook
from monitor.taxi.trips import Trip, WorkOrder

# Gross trips are counted "in a month" (docs/metrology.md); a month is the 30 days before as_of.
MONTH_MS = 30 * DAY_MS


def _bias_findings(
    bias: Bias | None, ratios: TripRatios, median: float | None, rule: DistanceRule
) -> list[Finding]:
    """The bias judgement of docs/metrology.md, or an honest `unknown`."""
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
    ci = f"{100 * rule.confidence:g} % interval {band_text(low, high, 2)}, {bias.n_trips} trips"
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
                    f"{band_text(limits[0], limits[1])} with confidence ({ci})",
                ),
                rule_severity=rule.severity,
            )
        ]
    if zone == "outside":
        why = outside_why(bias, rule)
        return [
            Finding(
                "suspect",
                Reason(
                    "taxi.distance.guard_band",
                    value,
                    band,
                    f"distance error {value:+.2f} % {why} ({ci}): on-site verification",
                ),
                rule_severity=rule.severity,
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
                    f"{band_text(band[0], band[1])} by the estimate only: its {ci} reaches "
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
                f"distance error {value:+.2f} % inside the guard band {band_text(band[0], band[1])} ({ci})",
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
        rule_severity=rule.severity,
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
            f"(last ending {format_ts(max(ratios.gross_end_ms))}), a sign of pulse injection "
            "or an altered pulse constant",
        ),
        rule_severity=rule.severity,
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
                rule_severity=rules.fare.severity,
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
                rule_severity=rules.tariff.severity,
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
    """Bias, CUSUM and gross trips of one meter (docs/metrology.md, "Distance against GNSS")."""
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
    """The evidence of docs/decisions.md: error_pct, error_ci_pct, n_trips and what else counted."""
    ratios, bias, result = dist.ratios, dist.bias, dist.cusum
    shift = None
    if dist.reference is not None and fleet_median is not None:
        shift = round(log_to_pct(dist.reference - fleet_median), 3)
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
        "fleet_median_pct": round(log_to_pct(fleet_median), 3)
        if fleet_median is not None
        else None,
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
    """All taxi rules for one meter as of `as_of_ms`: findings and the evidence of docs/decisions.md.

    Only data with event time ≤ as_of counts, so a replay gives the same answer.
    `fleet_median` and `fleet_sigma` come from the functions of those names over the
    fleet; a missing sigma falls back to the GNSS floor. The states (docs/metrology.md): normal
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

    grace_ms = int(rules.tariff.deadline_h * HOUR_MS)
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
