"""Telemetry parsing: every topic and payload of docs/mqtt.md, every reject reason."""

from __future__ import annotations

import json
from typing import TypedDict, Unpack

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.clock import format_ts, parse_ts
from monitor.core.schema import ELEC_EVENT, ELEC_READING, TAXI_EVENT, TAXI_STATUS, TAXI_TRIP, Record
from monitor.ingest.telemetry import Rejection, parse_message

TS_TEXT = "2026-03-01T00:15:00+08:00"
TS_MS = 1772295300000  # the same instant


class Options(TypedDict, total=False):
    """The keyword arguments of `parse_message` these tests vary."""

    root: str
    max_bytes: int


def parse(topic: str, body: object, **kw: Unpack[Options]) -> Record | Rejection | None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_message(topic, raw, **kw)


def test_both_time_formats_give_the_same_instant() -> None:
    assert parse_ts(TS_TEXT) == TS_MS
    assert parse_ts(TS_MS) == TS_MS
    assert parse_ts("2026-02-28T16:15:00Z") == TS_MS
    assert format_ts(TS_MS) == "2026-02-28T16:15:00.000Z"


def test_reading_identity_comes_from_the_topic() -> None:
    rec = parse("meters/elec/TA-01/M-7/reading", {"ts": TS_TEXT, "energy_kwh": 12.5, "seq": 3})
    assert isinstance(rec, Record)
    assert (rec.measurement, rec.meter, rec.district, rec.ts_ms) == (
        ELEC_READING,
        "M-7",
        "TA-01",
        TS_MS,
    )
    assert rec.values == {"energy_kwh": 12.5, "seq": 3}


def test_every_channel_parses() -> None:
    trip = {
        "trip_id": "T1",
        "start_ts": TS_MS - 600_000,
        "end_ts": TS_MS,
        "meter_km": 5.2,
        "fare_cny": 20.0,
        "tariff_version": "SH-2022",
        "gps_km": 5.1,
        "wait_s": 120,
    }
    cases = [
        (
            "meters/elec/D/M/event",
            {"ts": TS_MS, "code": "cover_open", "detail": {"n": 1}},
            ELEC_EVENT,
        ),
        ("meters/taxi/X/trip", trip, TAXI_TRIP),
        (
            "meters/taxi/X/status",
            {"ts": TS_MS, "seal": "intact", "tariff_version": "v"},
            TAXI_STATUS,
        ),
        ("meters/taxi/X/event", {"ts": TS_TEXT, "code": "seal_broken"}, TAXI_EVENT),
    ]
    for topic, body, measurement in cases:
        rec = parse(topic, body)
        assert isinstance(rec, Record), (topic, rec)
        assert rec.measurement is measurement
        assert rec.ts_ms == TS_MS
    event = parse("meters/elec/D/M/event", {"ts": TS_MS, "code": "cover_open", "detail": {"n": 1}})
    assert isinstance(event, Record) and event.values["detail"] == '{"n":1}'


def reason(topic: str, body: object, **kw: Unpack[Options]) -> str:
    result = parse(topic, body, **kw)
    assert isinstance(result, Rejection), result
    assert result.detail  # a reason a human can act on
    return result.reason


def test_rejections_say_why() -> None:
    topic = "meters/elec/D/M/reading"
    assert reason(topic, b"{not json") == "invalid_json"
    assert reason(topic, b"\xff\xfe\x00") == "invalid_json"
    assert reason(topic, {"energy_kwh": 1}) == "invalid_payload"  # no ts
    assert reason(topic, {"ts": TS_MS, "energy_kwh": "12"}) == "invalid_payload"
    assert reason(topic, b'{"ts": 1772295300000, "energy_kwh": NaN}') == "invalid_payload"
    assert reason(topic, b'{"ts": 1772295300000, "energy_kwh": Infinity}') == "invalid_payload"
    assert reason(topic, {"ts": TS_MS, "energy_kwh": -0.5}) == "invalid_payload"
    assert reason(topic, {"ts": "2026-03-01T00:15:00", "energy_kwh": 1}) == "invalid_payload"
    assert reason(topic, {"ts": 1772295300, "energy_kwh": 1}) == "invalid_payload"  # seconds
    assert reason(topic, {"ts": True, "energy_kwh": 1}) == "invalid_payload"
    assert reason(topic, [1, 2]) == "invalid_payload"
    assert reason(topic, {"ts": TS_MS, "energy_kwh": 1, "meter": "OTHER"}) == "identity_mismatch"
    assert reason(topic, {"ts": TS_MS, "energy_kwh": 1, "district": "B"}) == "identity_mismatch"
    assert reason("meters/elec/D/M/event", {"ts": TS_MS, "code": "bogus"}) == "invalid_payload"
    assert reason("meters/taxi/X/status", {"ts": TS_MS, "seal": "open", "tariff_version": "v"}) == (
        "invalid_payload"
    )
    assert (
        reason("meters/elec/D/M/reading", {"ts": TS_MS, "energy_kwh": 1}, max_bytes=10)
        == "oversized"
    )
    assert reason("meters/elec/D/M", {}) == "unknown_topic"
    assert reason("meters/water/D/M/reading", {}) == "unknown_topic"
    assert reason("other/elec/D/M/reading", {}) == "unknown_topic"
    assert reason("meters/elec/D/M b/reading", {}) == "unknown_topic"


def test_trip_ending_before_it_starts_is_refused() -> None:
    body = {
        "trip_id": "t",
        "start_ts": TS_MS,
        "end_ts": TS_MS - 1,
        "meter_km": 1,
        "fare_cny": 14,
        "tariff_version": "v",
    }
    assert reason("meters/taxi/X/trip", body) == "invalid_payload"


def test_matching_identity_in_payload_is_accepted() -> None:
    rec = parse("meters/elec/D/M/reading", {"ts": TS_MS, "energy_kwh": 1, "meter_id": "M"})
    assert isinstance(rec, Record)


def test_our_own_command_topics_are_ignored_not_rejected() -> None:
    assert parse("meters/taxi/X/cmd/tariff", {"version": "v"}) is None


def test_custom_topic_root() -> None:
    rec = parse("city/a/elec/D/M/reading", {"ts": TS_MS, "energy_kwh": 1}, root="city/a")
    assert isinstance(rec, Record)


@settings(max_examples=400, deadline=None)
@given(topic=st.text(max_size=60), payload=st.binary(max_size=300))
def test_arbitrary_input_never_raises(topic: str, payload: bytes) -> None:
    result = parse_message(topic, payload)
    assert result is None or isinstance(result, Record | Rejection)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(
        ["meters/elec/D/M/reading", "meters/taxi/X/trip", "meters/taxi/X/status"]
    ),
    body=st.dictionaries(
        st.sampled_from(
            [
                "ts",
                "energy_kwh",
                "trip_id",
                "start_ts",
                "end_ts",
                "meter_km",
                "fare_cny",
                "tariff_version",
                "seal",
                "meter",
                "seq",
            ]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
    ),
)
def test_json_objects_of_any_shape_never_raise(topic: str, body: dict[str, object]) -> None:
    result = parse_message(topic, json.dumps(body).encode())
    assert isinstance(result, Record | Rejection)


@settings(max_examples=300, deadline=None)
@given(
    ts=st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999),
    energy=st.floats(min_value=0, max_value=1e8, allow_nan=False),  # ingest.bounds default
    as_text=st.booleans(),
)
def test_valid_readings_round_trip(ts: int, energy: float, as_text: bool) -> None:
    stamp: object = format_ts(ts) if as_text else ts
    rec = parse("meters/elec/D/M/reading", {"ts": stamp, "energy_kwh": energy})
    assert isinstance(rec, Record)
    assert rec.ts_ms == ts
    assert rec.values["energy_kwh"] == energy
