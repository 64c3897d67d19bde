"""What ingest accepts beyond the shape of a payload: plausible values and times.

A payload can be well-formed and still poison the service: one meter whose clock
says 2099 would move every default `as_of` there, and an `energy_kwh` of 1e300
would swamp every balance it enters. `IngestSettings` (the `ingest:` section of
`monitor.yaml`) bounds both; `Limits` is its compiled form that the parser
checks each record against:

    limits = Limits.of(IngestSettings())
    limits.future(ts_ms, received_ms)            # why not, or None when plausible
    limits.out_of_range("elec_reading", values)  # why not, or None

Checking a time against the receive clock is validation, which may read the
wall clock; no decision ever does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

YEAR_S = 366 * 86_400


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Section):
    """A closed interval [min, max]; a side left out is unbounded."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class ElecReadingBounds(_Section):
    """Plausible values of an electricity reading (its fields: docs/mqtt.md)."""

    # An 8-digit register (99 999 999 kWh) outlasts the master meter of the largest
    # transformer area for decades; a value above it is a fault, not consumption.
    energy_kwh: Range = Range(min=0, max=1e8)
    reverse_kwh: Range = Range(min=0, max=1e8)
    # Low-voltage network (230/400 V); 1 000 V is the LV limit of IEC 60038.
    voltage_v: Range = Range(min=0, max=1000)
    # The LV side of a 2 500 kVA transformer carries ~3 600 A; 5 000 A covers any 台区.
    current_a: Range = Range(min=0, max=5000)
    power_kw: Range = Range(min=-5000, max=5000)
    # The clock rule judges offsets of seconds to hours; a year off is a broken clock
    # (and is rejected rather than stored as a number that would dwarf every chart).
    clock_offset_s: Range = Range(min=-YEAR_S, max=YEAR_S)


class TaxiTripBounds(_Section):
    """Plausible values of one finished taxi trip."""

    # No city trip reaches 1 000 km or 10 000 CNY; a day of waiting is a stuck meter.
    meter_km: Range = Range(min=0, max=1000)
    gps_km: Range = Range(min=0, max=1000)
    empty_km: Range = Range(min=0, max=1000)
    fare_cny: Range = Range(min=0, max=10_000)
    wait_s: Range = Range(min=0, max=86_400)


class TaxiStatusBounds(_Section):
    """Plausible values of a taxi meter heartbeat."""

    # Meter constants are hundreds to tens of thousands of pulses per km.
    pulses_per_km: Range = Range(min=1, max=100_000)


class Bounds(_Section):
    """Per measurement and field, the range a value must lie in (else `out_of_range`)."""

    elec_reading: ElecReadingBounds = ElecReadingBounds()
    taxi_trip: TaxiTripBounds = TaxiTripBounds()
    taxi_status: TaxiStatusBounds = TaxiStatusBounds()


class DistrictMismatchSettings(_Section):
    """A registered meter publishing under another district's topic."""

    alert_after: int = Field(
        3, ge=1, description="mismatched messages from one meter before an alert opens"
    )
    severity: str = Field("major", pattern="^(critical|major|minor|info)$")


class IngestSettings(_Section):
    """What ingest accepts (monitor.yaml `ingest:`)."""

    max_future_s: float = Field(
        900.0,
        ge=0,
        description="a timestamp further ahead of the receive time is rejected (future_timestamp)",
    )
    bounds: Bounds = Bounds()
    district_mismatch: DistrictMismatchSettings = DistrictMismatchSettings()


_UNITS = {"kwh": "kWh", "v": "V", "a": "A", "kw": "kW", "s": "s", "km": "km", "cny": "CNY"}


def unit_of(name: str) -> str:
    """The unit a field's name carries (`energy_kwh` → kWh, `pulses_per_km` → /km)."""
    if name.endswith("_per_km"):
        return "/km"
    return _UNITS.get(name.rsplit("_", 1)[-1], "")


Check = tuple[str, float | None, float | None, str]  # field, min, max, unit


@dataclass(frozen=True, slots=True)
class Limits:
    """The compiled `IngestSettings`: what `parse_message` checks a record against."""

    max_future_ms: int
    checks: Mapping[str, tuple[Check, ...]]  # measurement → its bounded fields

    @classmethod
    def of(cls, settings: IngestSettings) -> Limits:
        """Compile settings once (the worker holds the result)."""
        checks: dict[str, tuple[Check, ...]] = {}
        for measurement, section in settings.bounds:
            checks[measurement] = tuple(
                (name, r.min, r.max, unit_of(name))
                for name, r in section
                if r.min is not None or r.max is not None
            )
        return cls(int(settings.max_future_s * 1000), checks)

    def future(self, ts_ms: int, received_ms: int) -> str | None:
        """Why `ts_ms` is further ahead of the receive time than tolerated, or None."""
        ahead = ts_ms - received_ms
        if ahead <= self.max_future_ms:
            return None
        return (
            f"timestamp {_iso(ts_ms)} is {_span(ahead)} ahead of the receive time "
            f"{_iso(received_ms)}; at most {_span(self.max_future_ms)} ahead is accepted "
            "(ingest.max_future_s): a meter clock fault?"
        )

    def out_of_range(self, measurement: str, values: Mapping[str, Any]) -> str | None:
        """Why the first field outside its configured range is refused, or None."""
        for name, low, high, unit in self.checks.get(measurement, ()):
            value = values.get(name)
            if value is None:
                continue
            if low is not None and value < low:
                side, bound = "below the plausible minimum", low
            elif high is not None and value > high:
                side, bound = "above the plausible maximum", high
            else:
                continue
            return (
                f"{name} {value:g} {unit} is {side} {bound:g} {unit} "
                f"(ingest.bounds.{measurement}.{name})"
            )
        return None


DEFAULT_LIMITS = Limits.of(IngestSettings())


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _span(ms: int) -> str:
    """A duration for people: '12 s', '40 min', '3.0 h', '72.5 years'."""
    s = ms / 1000
    if s < 120:
        return f"{s:g} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86_400:
        return f"{s / 3600:.1f} h"
    if s < 2 * 365.25 * 86_400:
        return f"{s / 86_400:.1f} days"
    return f"{s / (365.25 * 86_400):.1f} years"
