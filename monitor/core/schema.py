"""The telemetry schema: one table of measurements, shared by every store.

InfluxDB conventions: the measurement names what was sent, tags are the few
low-cardinality-per-series keys we filter by, everything measured is a field.
`meter` is a tag because a series is one meter's history, and that is what
makes a duplicate (same meter, same timestamp) overwrite the same point.
`district` is a tag on electricity data (a meter feeds from one area, so it
adds no series). `lot` and other registry attributes are deliberately not tags:
the registry can change after the fact, and a tag that changes splits a
meter's series and breaks duplicate idempotency; they are joined at query time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FieldType = Literal["float", "int", "str"]

# Meter, district and lot ids: one topic level, no wildcards, short enough for a tag.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Measurement:
    """One kind of telemetry point and how it is keyed."""

    name: str
    kind: Literal["elec", "taxi"]
    channel: str
    tags: tuple[str, ...]
    fields: dict[str, FieldType]
    # Columns (besides meter) that identify a point: duplicates share them.
    key: tuple[str, ...]

    def numeric_fields(self) -> list[str]:
        return [f for f, t in self.fields.items() if t != "str"]


ELEC_READING = Measurement(
    "elec_reading",
    "elec",
    "reading",
    tags=("district",),
    fields={
        "energy_kwh": "float",
        "reverse_kwh": "float",
        "voltage_v": "float",
        "current_a": "float",
        "power_kw": "float",
        "clock_offset_s": "float",
        "seq": "int",
    },
    key=("ts",),
)
ELEC_EVENT = Measurement(
    "elec_event",
    "elec",
    "event",
    tags=("district", "code"),
    fields={"detail": "str"},
    key=("ts", "code"),
)
TAXI_TRIP = Measurement(
    "taxi_trip",
    "taxi",
    "trip",
    tags=(),
    fields={
        "trip_id": "str",
        "start_ts": "int",
        "meter_km": "float",
        "gps_km": "float",
        "fare_cny": "float",
        "wait_s": "float",
        "empty_km": "float",
        "tariff_version": "str",
    },
    # A trip's time is its end; InfluxDB keys it by (meter, end time), the
    # embedded store by trip_id: a re-sent trip is the same point in both.
    key=("trip_id",),
)
TAXI_STATUS = Measurement(
    "taxi_status",
    "taxi",
    "status",
    tags=(),
    fields={"seal": "str", "tariff_version": "str", "firmware": "str", "pulses_per_km": "float"},
    key=("ts",),
)
TAXI_EVENT = Measurement(
    "taxi_event",
    "taxi",
    "event",
    tags=("code",),
    fields={"detail": "str"},
    key=("ts", "code"),
)

MEASUREMENTS: dict[str, Measurement] = {
    m.name: m for m in (ELEC_READING, ELEC_EVENT, TAXI_TRIP, TAXI_STATUS, TAXI_EVENT)
}
BY_ROUTE: dict[tuple[str, str], Measurement] = {
    (m.kind, m.channel): m for m in MEASUREMENTS.values()
}


def field_owner(kind: str, field: str) -> Measurement | None:
    """The measurement of `kind` that carries `field` (for history queries)."""
    for m in MEASUREMENTS.values():
        if m.kind == kind and field in m.fields:
            return m
    return None


@dataclass(frozen=True, slots=True)
class Record:
    """One validated telemetry point, ready for any store."""

    measurement: Measurement
    meter: str
    district: str
    ts_ms: int
    values: dict[str, float | int | str]


@dataclass(frozen=True)
class OutputMeasurement:
    """A measurement the service writes about its own results (InfluxDB only).

    Evaluation passes write these beside the telemetry so that dashboards (Grafana,
    deploy/grafana/) can chart decisions and estimates over time. A point's time is
    the pass's `as_of` (a day's start for daily figures): a pass repeated at the same
    `as_of` overwrites its points. `region` is a tag too, so a dashboard can filter by
    it; the registry can change a meter's region, which then starts a new series, as a
    move between regions should.
    """

    name: str
    tags: tuple[str, ...]
    fields: dict[str, FieldType]


METER_STATE = OutputMeasurement(
    "meter_state",
    tags=("meter", "kind", "district", "lot", "region"),
    fields={
        "state": "str",
        "decision": "str",
        "severity": "int",  # 0 normal, 1 unknown, 2 watch, 3 suspect, 4 faulty
        "error_pct": "float",
        "error_ci_low_pct": "float",
        "error_ci_high_pct": "float",
        "evaluable": "int",
        "n": "int",  # intervals (electricity) or trips (taxi) the estimate rests on
        "fare_mismatches": "int",
        "gross_trips": "int",
    },
)
LOT_STATE = OutputMeasurement(
    "lot_state",
    tags=("lot", "region"),
    fields={
        "state": "str",
        "decision": "str",
        "meters": "int",
        "faulty_share": "float",
        "evaluable_share": "float",
        "estimated_nonconforming_share": "float",
        "pa_at_estimate": "float",
    },
)
DISTRICT_BALANCE = OutputMeasurement(
    "district_balance",
    tags=("district", "region"),
    fields={
        "gates_passed": "int",
        "line_loss_pct": "float",
        "completeness": "float",
        "n_intervals": "int",
        "customers": "int",
        "evaluable": "int",
        "fixed_loss_kw": "float",
        "residual_rms_pct": "float",
    },
)
DISTRICT_LOSS_DAILY = OutputMeasurement(
    "district_loss_daily",
    tags=("district", "region"),
    fields={"line_loss_pct": "float", "supplied_kwh": "float", "intervals": "int"},
)
FLEET_SUMMARY = OutputMeasurement(
    "fleet_summary",
    tags=("kind", "region"),
    fields={
        "meters": "int",
        **{f"state_{s}": "int" for s in ("normal", "unknown", "watch", "suspect", "faulty")},
        **{f"decision_{d}": "int" for d in ("keep", "extend", "resample", "replace")},
    },
)
OUTPUT_MEASUREMENTS: dict[str, OutputMeasurement] = {
    m.name: m
    for m in (METER_STATE, LOT_STATE, DISTRICT_BALANCE, DISTRICT_LOSS_DAILY, FLEET_SUMMARY)
}
