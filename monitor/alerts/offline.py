"""Offline meters: silent for too many of their reporting periods, judged in event time.

A meter is offline when the newest telemetry of the fleet (not the wall clock) is
more than `silent_periods` of its cadence past its own last message. When most of a
district falls silent together, that is one district alert (a feeder or a
concentrator is down), not one per meter. The service suppresses the whole check
during its start-up grace and while its own broker connection is down, when
silence says nothing about the meters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from monitor.alerts.book import Condition
from monitor.core.clock import format_ts

OFFLINE_RULES = ("offline",)


class OfflineSettings(BaseModel):
    """Expected cadence per kind and how much silence is too much."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    elec_period_s: float = Field(900, gt=0, description="15-minute readings")
    taxi_period_s: float = Field(300, gt=0, description="5-minute heartbeats")
    silent_periods: float = Field(8, gt=0, description="periods of silence before offline")
    district_share: float = Field(0.5, gt=0, le=1, description="share silent → one district alert")
    district_min_meters: int = Field(3, ge=1)
    grace_s: float = Field(1800, ge=0, description="no offline alerts this long after start")
    severity: str = "minor"
    district_severity: str = "major"


def offline_conditions(
    seen: Mapping[str, tuple[str, str | None, int]], as_of_ms: int, settings: OfflineSettings
) -> list[Condition]:
    """Conditions for silent meters (meter → (kind, district, last event time))."""
    silent: dict[str, tuple[str, str | None, int]] = {}
    for meter, (kind, district, last) in seen.items():
        period = settings.elec_period_s if kind == "elec" else settings.taxi_period_s
        if as_of_ms - last > settings.silent_periods * period * 1000:
            silent[meter] = (kind, district, last)
    down = _silent_districts(seen, silent, settings)
    out = [_district(d, n, as_of_ms, settings) for d, n in sorted(down.items())]
    for meter, (kind, district, last) in sorted(silent.items()):
        if district in down:
            continue
        out.append(
            Condition(
                rule="offline.meter",
                kind=kind,
                subject=meter,
                severity=settings.severity,
                message=f"{meter} silent since {format_ts(last)}",
                at_ms=as_of_ms,
                evidence={"last_seen": format_ts(last), "silent_s": (as_of_ms - last) // 1000},
                meter=meter,
                district=district,
            )
        )
    return out


def _silent_districts(
    seen: Mapping[str, tuple[str, str | None, int]],
    silent: Mapping[str, tuple[str, str | None, int]],
    settings: OfflineSettings,
) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for meter, (_, district, _) in seen.items():
        if district:
            total[district] += 1
            quiet[district] += meter in silent
    return {
        d: quiet[d]
        for d in total
        if total[d] >= settings.district_min_meters
        and quiet[d] / total[d] >= settings.district_share
    }


def _district(district: str, n: int, as_of_ms: int, settings: OfflineSettings) -> Condition:
    return Condition(
        rule="offline.district",
        kind="district",
        subject=district,
        severity=settings.district_severity,
        message=f"district {district}: {n} meters silent at once (feeder or concentrator?)",
        at_ms=as_of_ms,
        evidence={"silent_meters": n},
        district=district,
    )
