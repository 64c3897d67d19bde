"""What to simulate (`FleetSpec`), what comes out (`SimMessage`), and shared helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Required, TypedDict

import numpy as np

DAY_S = 86_400


@dataclass(frozen=True, kw_only=True)
class FleetSpec:
    """A simulated fleet: its size, physics, delivery defects and planted faults.

    `FleetSpec(start_ms=...)` gives three transformer areas (districts) of 40-60 customer
    meters (`meters_per_district`, inclusive) plus one master meter each, 20 taxis, and one
    of each planted fault. Times of planted faults (`*_after_s`) count from `start_ms`.
    A planted fault that does not fit (too few meters) is left out; `Fleet.truth()` says
    which meters carry which.
    """

    start_ms: int
    seed: int = 1
    districts: int = 3
    meters_per_district: tuple[int, int] = (40, 60)
    taxis: int = 20
    interval_s: int = 900
    register_resolution_kwh: float = 0.001
    utc_offset_minutes: int = 480
    topic_root: str = "meters"
    # Delivery defects. Drops hit only periodic messages (readings, heartbeats): events and
    # trips are stored by the meter until acknowledged, so they arrive at least once.
    missing_rate: float = 0.01
    duplicate_rate: float = 0.005
    disorder_rate: float = 0.01
    # Electricity meters (docs/metrology.md).
    clean_error_sd_pct: float = 0.5
    beyond_limit_share: float = 0.05
    beyond_limit_error_pct: tuple[float, float] = (4.0, 6.0)
    vacant_share: float = 0.05
    master_error_sd_pct: float = 0.05
    # How the I²R loss follows the load: "customer" γ·(Σx)²/Δt, the current the customers
    # draw; "trunk" r·y0²/Δt, the current through the transformer, which carries the
    # losses' own current too (y0 = Σx + L_fix·Δt + r·y0²/Δt, as a real trunk behaves).
    line_loss_model: str = "customer"
    elec_event_rate_per_day: float = 0.002
    tamper_meters: int = 1
    tamper_after_s: int = DAY_S
    stopped_meters: int = 1
    stopped_after_s: int = 2 * DAY_S
    clock_fault_meters: int = 1
    clock_fault_after_s: int = DAY_S // 2
    # Taxi fare meters (docs/metrology.md).
    taxi_bias_pct: tuple[float, float] = (0.5, 0.5)
    gnss_bias_pct: float = 1.5
    taxi_inflation_pct: tuple[float, ...] = (2.0, 5.0, 10.0)
    pulse_injectors: int = 1
    pulse_factor: float = 1.5
    pulse_share: float = 0.2
    overchargers: int = 1
    overcharge_pct: float = 10.0
    seal_breaks: int = 1
    seal_break_after_s: int = DAY_S
    stale_tariff_meters: int = 1
    taxi_event_rate_per_day: float = 0.01

    def __post_init__(self) -> None:
        """Refuse specs the generator cannot honour."""
        low, high = self.meters_per_district
        if self.districts < 0 or self.taxis < 0 or not 1 <= low <= high:
            raise ValueError(
                "districts and taxis must be >= 0 and 1 <= meters_per_district[0] <= [1]"
            )
        if self.interval_s < 60 or DAY_S % self.interval_s:
            raise ValueError("interval_s must be >= 60 and divide a day")
        if not self.register_resolution_kwh > 0:
            raise ValueError("register_resolution_kwh must be > 0")
        for name in (
            "missing_rate",
            "duplicate_rate",
            "disorder_rate",
            "vacant_share",
            "beyond_limit_share",
            "pulse_share",
        ):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.line_loss_model not in ("customer", "trunk"):
            raise ValueError('line_loss_model must be "customer" or "trunk"')
        if "/" in self.topic_root or not self.topic_root:
            raise ValueError("topic_root must be one non-empty topic level")

    @property
    def interval_ms(self) -> int:
        """The reading interval in milliseconds."""
        return self.interval_s * 1000

    @property
    def tz(self) -> timezone:
        """The fleet's local time zone (a fixed offset, +08:00 by default)."""
        return timezone(timedelta(minutes=self.utc_offset_minutes))


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message: its event time (epoch ms), topic and payload."""

    event_ms: int
    topic: str
    payload: bytes


class MeterTruth(TypedDict, total=False):
    """What one simulated meter really is (`Fleet.truth()`): the answer the monitor's
    decisions are checked against. A plain dict, so it prints and serialises as one."""

    kind: Required[str]  # "elec" or "taxi"
    lot: Required[str]
    error_pct: Required[float]  # true error (taxi: distance error with any inflation)
    faults: Required[list[str]]  # planted faults, by name
    events: Required[list[dict[str, object]]]  # event payloads sent so far
    # Electricity meters.
    role: str  # "customer" or "master"
    district: str
    vacant: bool
    fault_ms: dict[str, int]  # planted fault → when it began
    fixed_loss_kw: float  # master meters: their district's loss model
    gamma_per_kw: float
    # Taxi meters.
    plate: str
    bias_pct: float
    inflation_pct: float
    seal_break_ms: int | None
    pulse_injector: bool
    overcharge: bool
    stale_tariff: bool
    n_trips: int
    tariff_versions: list[str]


@dataclass
class Produced:
    """What the meters produce in one interval, before delivery defects are applied."""

    periodic: list[SimMessage] = field(default_factory=list)
    """Readings and heartbeats: a lost one is simply missing."""
    reliable: list[SimMessage] = field(default_factory=list)
    """Events and trips: the meter keeps them until acknowledged, so never lost."""


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on the seed and the keys: random access, reproducible."""
    return np.random.default_rng([seed, *keys])


def rfc3339(ms: int, tz: timezone) -> str:
    """Epoch ms (whole seconds) as RFC 3339 in the given offset, e.g. 2026-03-01T00:15:00+08:00."""
    return datetime.fromtimestamp(ms // 1000, tz).isoformat(timespec="seconds")


def local_day(ms: int, tz: timezone) -> int:
    """Days since 1970-01-01 in local time."""
    offset = tz.utcoffset(None)
    return (ms // 1000 + int(offset.total_seconds())) // DAY_S


def local_day_start_ms(day: int, tz: timezone) -> int:
    """Epoch ms of local midnight starting `day`."""
    offset = tz.utcoffset(None)
    return (day * DAY_S - int(offset.total_seconds())) * 1000


def ts_json(ms: int, epoch_format: bool, tz: timezone) -> str:
    """A ts value as JSON text: an integer of epoch ms, or a quoted RFC 3339 string."""
    return str(ms) if epoch_format else f'"{rfc3339(ms, tz)}"'
