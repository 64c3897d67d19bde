"""Telemetry in: topics and payloads of docs/mqtt.md, validated from raw bytes.

`parse_message` is the one entry point: bytes and a topic in, a `Record`, a
`Rejection` (with a reason code and a human detail) or `None` (a topic we
publish ourselves) out. It never raises on bad input.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from monitor.core.clock import parse_ts
from monitor.core.schema import (
    ELEC_EVENT,
    ELEC_READING,
    ID_PATTERN,
    MEASUREMENTS,
    TAXI_EVENT,
    TAXI_STATUS,
    TAXI_TRIP,
    Measurement,
    Record,
)
from monitor.ingest.limits import DEFAULT_LIMITS, Limits

ELEC_EVENT_CODES = (
    "cover_open",
    "terminal_cover_open",
    "magnetic_interference",
    "reverse_energy",
    "clock_battery_low",
    "clock_error",
    "power_down",
    "relay_fault",
    "self_check_fail",
    "overvoltage",
    "undervoltage",
)
TAXI_EVENT_CODES = (
    "seal_broken",
    "param_changed",
    "power_loss",
    "tariff_applied",
    "self_check_fail",
    "sensor_fault",
)


EpochMs = Annotated[int, BeforeValidator(parse_ts)]
NonNeg = Annotated[float, Field(ge=0)]
Detail = str | dict[str, Any] | list[Any] | int | float | None


class _Payload(BaseModel):
    # Unknown keys are ignored so meters can add fields without being rejected;
    # NaN and infinity are refused because no store or estimator can use them;
    # strict: "12" is not a number and 1.5 is not a seq, a meter that sends them is broken.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True, strict=True)

    meter: str | None = Field(None, validation_alias=AliasChoices("meter", "meter_id"))
    district: str | None = None


class ElecReading(_Payload):
    ts: EpochMs
    energy_kwh: NonNeg
    reverse_kwh: NonNeg | None = None
    voltage_v: NonNeg | None = None
    current_a: NonNeg | None = None
    power_kw: float | None = None
    clock_offset_s: float | None = None
    seq: Annotated[int, Field(ge=0)] | None = None


class ElecEvent(_Payload):
    ts: EpochMs
    code: Literal[ELEC_EVENT_CODES]  # type: ignore[valid-type]
    detail: Detail = None


class TaxiTrip(_Payload):
    trip_id: Annotated[str, Field(min_length=1, max_length=128)]
    start_ts: EpochMs
    end_ts: EpochMs
    meter_km: NonNeg
    fare_cny: NonNeg
    tariff_version: Annotated[str, Field(min_length=1, max_length=64)]
    gps_km: NonNeg | None = None
    wait_s: NonNeg | None = None
    empty_km: NonNeg | None = None


class TaxiStatus(_Payload):
    ts: EpochMs
    seal: Literal["intact", "broken"]
    tariff_version: Annotated[str, Field(min_length=1, max_length=64)]
    firmware: str | None = None
    pulses_per_km: Annotated[float, Field(gt=0)] | None = None


class TaxiEvent(_Payload):
    ts: EpochMs
    code: Literal[TAXI_EVENT_CODES]  # type: ignore[valid-type]
    detail: Detail = None


MODELS: dict[str, type[_Payload]] = {
    ELEC_READING.name: ElecReading,
    ELEC_EVENT.name: ElecEvent,
    TAXI_TRIP.name: TaxiTrip,
    TAXI_STATUS.name: TaxiStatus,
    TAXI_EVENT.name: TaxiEvent,
}


@dataclass(frozen=True, slots=True)
class _Shape:
    """Per measurement, what parsing needs besides the topic (computed once)."""

    validate_json: Callable[[bytes], Any]  # the model's compiled validator
    names: tuple[str, ...]  # its tags and fields the store keeps (district comes from the topic)
    json_detail: bool  # `detail` may be an object: stored as JSON text


def _shape(measurement: Measurement) -> _Shape:
    model = MODELS[measurement.name]
    wanted = (*measurement.tags, *measurement.fields)
    names = tuple(n for n in wanted if n != "district" and n in model.model_fields)
    return _Shape(model.__pydantic_validator__.validate_json, names, "detail" in names)


SHAPES: dict[str, _Shape] = {m.name: _shape(m) for m in MEASUREMENTS.values()}


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic says: which measurement, which meter, which district."""

    measurement: Measurement
    meter: str
    district: str
    shape: _Shape = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused: a short reason code (a metric label) and detail.

    `ts_ms` is the message's event time when it was parsed before being refused.
    """

    reason: str
    detail: str
    ts_ms: int | None = None


IGNORED = None  # our own command topics under the root: not telemetry, not an error

REASONS = (
    "oversized",
    "unknown_topic",
    "invalid_json",
    "invalid_payload",
    "identity_mismatch",
    "out_of_range",
    "future_timestamp",
    "district_mismatch",
)


@functools.lru_cache(maxsize=65536)
def route_topic(topic: str, root: str) -> Route | Rejection | None:
    """Map a topic to its measurement and identity, per docs/mqtt.md.

    Cached: a fleet sends on a bounded set of topics and the answer is immutable.
    """
    prefix = root + "/"
    if not topic.startswith(prefix):
        return Rejection("unknown_topic", f"topic outside {prefix}#")
    parts = topic[len(prefix) :].split("/")
    if parts[0] == "elec" and len(parts) == 4 and parts[3] in ("reading", "event"):
        district, meter, channel = parts[1], parts[2], parts[3]
        measurement = ELEC_READING if channel == "reading" else ELEC_EVENT
    elif parts[0] == "taxi" and len(parts) == 3 and parts[2] in ("trip", "status", "event"):
        district, meter = "", parts[1]
        measurement = {"trip": TAXI_TRIP, "status": TAXI_STATUS, "event": TAXI_EVENT}[parts[2]]
    elif parts[0] == "taxi" and len(parts) >= 3 and parts[2] == "cmd":
        return IGNORED
    else:
        return Rejection("unknown_topic", "not a telemetry topic (see docs/mqtt.md)")
    for label, value in (("meter", meter), ("district", district)):
        if value and not ID_PATTERN.match(value):
            return Rejection(
                "unknown_topic", f"{label} id {value[:70]!r} is not [A-Za-z0-9_.:-]{{1,64}}"
            )
    return Route(measurement, meter, district, SHAPES[measurement.name])


def _describe(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return Rejection("invalid_json", errors[0]["msg"])
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(payload)"
        parts.append(f"{loc}: {e['msg']}")
    return Rejection("invalid_payload", "; ".join(parts))


def _values(shape: _Shape, model: _Payload) -> dict[str, float | int | str]:
    given = model.__dict__
    out = {n: given[n] for n in shape.names if given[n] is not None}
    if shape.json_detail:
        detail = out.get("detail")
        if detail is not None and not isinstance(detail, str):
            out["detail"] = json.dumps(detail, separators=(",", ":"), ensure_ascii=False)
    return out


def parse_message(
    topic: str,
    payload: bytes,
    root: str = "meters",
    max_bytes: int = 65536,
    limits: Limits = DEFAULT_LIMITS,
    received_ms: int | None = None,
    districts: Mapping[str, str] | None = None,
) -> Record | Rejection | None:
    """Validate one MQTT message; identity comes from the topic, never the payload.

    `limits` bounds values (and, given the receive time `received_ms`, how far ahead
    of it a timestamp may be); `districts` maps registered meters to their district,
    which a topic must then name (the registry is authoritative for its meters).
    """
    if len(payload) > max_bytes:
        return Rejection("oversized", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    route = route_topic(topic, root)
    if not isinstance(route, Route):
        return route
    shape = route.shape
    try:
        model: _Payload = shape.validate_json(payload)
    except ValidationError as exc:
        return _describe(exc)
    if model.meter is not None and model.meter != route.meter:
        return Rejection(
            "identity_mismatch", f"payload names meter {model.meter!r}, topic {route.meter!r}"
        )
    if route.district and model.district is not None and model.district != route.district:
        return Rejection(
            "identity_mismatch",
            f"payload names district {model.district!r}, topic {route.district!r}",
        )
    if isinstance(model, TaxiTrip):
        if model.end_ts < model.start_ts:
            return Rejection("invalid_payload", "end_ts is before start_ts")
        ts = model.end_ts
    else:
        ts = model.ts  # type: ignore[attr-defined]
    values = _values(shape, model)
    why = limits.out_of_range(route.measurement.name, values)
    if why is not None:
        return Rejection("out_of_range", why, ts)
    if received_ms is not None and (why := limits.future(ts, received_ms)) is not None:
        return Rejection("future_timestamp", why, ts)
    if districts is not None and route.district:
        registered = districts.get(route.meter)
        if registered is not None and registered != route.district:
            return Rejection(
                "district_mismatch",
                f"meter {route.meter!r} is registered in district {registered!r}, "
                f"the topic names {route.district!r} (re-wired meter or spoofed topic?)",
                ts,
            )
    return Record(route.measurement, route.meter, route.district, ts, values)
