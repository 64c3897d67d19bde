"""Data that would poison the service: future clocks, implausible values, foreign topics.

The end-to-end cases go through a real Mosquitto into an in-process service whose
receive clock is injected (validation may read a clock; decisions may not).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from monitor.core.clock import format_ts, parse_ts
from monitor.core.registry import parse_rows
from monitor.core.schema import ELEC_READING, Record
from monitor.core.yamlfile import ConfigError
from monitor.ingest.limits import IngestSettings, Limits
from monitor.ingest.telemetry import Rejection, parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.service import Components, Service
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS, Collector, Publisher, reading, wait_for
from tests.services import Mosquitto

REPO = Path(__file__).resolve().parent.parent
STEP = 900_000
NOW_MS = BASE_MS + 12 * STEP  # the receive clock of these tests: 3 h after BASE_MS


def parse(topic: str, body: dict[str, Any], **kw: Any) -> Record | Rejection | None:
    return parse_message(topic, json.dumps(body).encode(), **kw)


def rejected(topic: str, body: dict[str, Any], **kw: Any) -> Rejection:
    result = parse(topic, body, **kw)
    assert isinstance(result, Rejection), result
    return result


# -- item 2: implausible values ---------------------------------------------------------------

READING = "meters/elec/D1/M1/reading"
TRIP = {
    "trip_id": "t1",
    "start_ts": BASE_MS,
    "end_ts": BASE_MS + 600_000,
    "meter_km": 5.0,
    "fare_cny": 20.0,
    "tariff_version": "SH-2022",
}


ELEC, TRIPS, STATUS = READING, "meters/taxi/T1/trip", "meters/taxi/T1/status"


@pytest.mark.parametrize(
    ("topic", "body", "field", "unit"),
    [
        (ELEC, {"ts": BASE_MS, "energy_kwh": 1e300}, "energy_kwh", "kWh"),
        (ELEC, {"ts": BASE_MS, "energy_kwh": 5, "reverse_kwh": 2e9}, "reverse_kwh", "kWh"),
        (ELEC, {"ts": BASE_MS, "energy_kwh": 5, "current_a": 1e6}, "current_a", "A"),
        (ELEC, {"ts": BASE_MS, "energy_kwh": 5, "voltage_v": 230_000}, "voltage_v", "V"),
        (ELEC, {"ts": BASE_MS, "energy_kwh": 5, "power_kw": -1e7}, "power_kw", "kW"),
        (ELEC, {"ts": BASE_MS, "energy_kwh": 5, "clock_offset_s": 1e12}, "clock_offset_s", "s"),
        (TRIPS, {**TRIP, "meter_km": 1e5}, "meter_km", "km"),
        (TRIPS, {**TRIP, "gps_km": 5e4}, "gps_km", "km"),
        (TRIPS, {**TRIP, "fare_cny": 1e9}, "fare_cny", "CNY"),
        (TRIPS, {**TRIP, "wait_s": 1e7}, "wait_s", "s"),
        (
            STATUS,
            {"ts": BASE_MS, "seal": "intact", "tariff_version": "v", "pulses_per_km": 1e9},
            "pulses_per_km",
            "/km",
        ),
    ],
)
def test_implausible_values_are_rejected_with_field_unit_and_setting(
    topic: str, body: dict[str, Any], field: str, unit: str
) -> None:
    rej = rejected(topic, body)
    assert rej.reason == "out_of_range"
    assert rej.detail.startswith(f"{field} ") and f" {unit} " in rej.detail
    measurement = {ELEC: "elec_reading", TRIPS: "taxi_trip", STATUS: "taxi_status"}[topic]
    assert rej.detail.endswith(f"(ingest.bounds.{measurement}.{field})")


def test_values_inside_the_bounds_pass() -> None:
    body = {"ts": BASE_MS, "energy_kwh": 99_999_999.99, "current_a": 80.0, "voltage_v": 242.0}
    assert isinstance(parse(READING, body), Record)
    assert isinstance(parse("meters/taxi/T1/trip", {**TRIP, "meter_km": 180.0}), Record)


def test_bounds_come_from_monitor_yaml_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "monitor.yaml").write_text(
        "ingest:\n  bounds:\n    elec_reading:\n      current_a: {min: 0, max: 100}\n",
        encoding="utf-8",
    )
    settings = load_settings(tmp_path, {"MONITOR_INGEST__MAX_FUTURE_S": "60"})
    limits = Limits.of(settings.ingest)
    assert limits.max_future_ms == 60_000
    body = {"ts": BASE_MS, "energy_kwh": 5, "current_a": 120.0}
    assert rejected(READING, body, limits=limits).reason == "out_of_range"
    assert isinstance(parse(READING, body), Record)  # the default allows 120 A
    # fields not named keep their defaults
    assert rejected(READING, {"ts": BASE_MS, "energy_kwh": 1e300}, limits=limits).reason == (
        "out_of_range"
    )


def test_the_shipped_monitor_yaml_states_the_built_in_bounds() -> None:
    # config/monitor.yaml documents the defaults; it must not drift from them.
    assert load_settings(REPO / "config", {}).ingest == IngestSettings()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ingest:\n  bounds:\n    elec_reading:\n      current_a: {min: 10, max: 1}\n", "min 10"),
        ("ingest:\n  bounds:\n    elec_reading:\n      curent_a: {max: 1}\n", "curent_a"),
        ("ingest:\n  max_future_s: -5\n", "max_future_s"),
    ],
)
def test_bad_bounds_are_refused_at_start(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "monitor.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=reason):
        load_settings(tmp_path, {})


def test_out_of_range_epoch_numbers_name_the_likely_unit() -> None:
    def why(ts: object) -> str:
        with pytest.raises(ValueError) as caught:
            parse_ts(ts)
        return str(caught.value)

    assert "epoch seconds" in why(1_772_294_400)
    assert "microseconds" in why(1_772_294_400_000_000)
    assert "nanoseconds" in why(1_772_294_400_000_000_000)
    # year 2100 in milliseconds is not a unit mistake: no hint, and never "seconds"
    assert "seconds" not in why(4_102_444_800_000)
    assert "seconds" not in why("2100-06-01T00:00:00Z")


# -- item 1: future timestamps ------------------------------------------------------------------


def test_a_timestamp_ahead_of_the_receive_clock_is_rejected_beyond_the_tolerance() -> None:
    body = {"ts": "2099-06-01T00:00:00Z", "energy_kwh": 5}
    rej = rejected(READING, body, received_ms=NOW_MS)
    assert rej.reason == "future_timestamp"
    assert "2099-06-01T00:00:00Z" in rej.detail and "ingest.max_future_s" in rej.detail
    ms_2050 = parse_ts("2050-01-01T00:00:00Z")
    assert rejected(READING, {"ts": ms_2050, "energy_kwh": 5}, received_ms=NOW_MS).reason == (
        "future_timestamp"
    )
    ok = parse(READING, {"ts": NOW_MS + 14 * 60_000, "energy_kwh": 5}, received_ms=NOW_MS)
    assert isinstance(ok, Record)  # a meter clock a little fast is within 15 min
    late = parse(READING, {"ts": NOW_MS + 16 * 60_000, "energy_kwh": 5}, received_ms=NOW_MS)
    assert isinstance(late, Rejection) and late.reason == "future_timestamp"
    trip = {**TRIP, "start_ts": NOW_MS, "end_ts": NOW_MS + 86_400_000}
    assert rejected("meters/taxi/T1/trip", trip, received_ms=NOW_MS).reason == "future_timestamp"
    tight = Limits.of(IngestSettings(max_future_s=0))
    assert rejected(
        READING, {"ts": NOW_MS + 1, "energy_kwh": 5}, received_ms=NOW_MS, limits=tight
    ).reason == ("future_timestamp")


def test_default_as_of_never_passes_the_receive_clock(tmp_path: Path) -> None:
    # A row from before ingest refused future clocks (or a clock within tolerance).
    state = SqliteState(tmp_path / "state.sqlite")
    honest = [Record(ELEC_READING, "M1", "D1", BASE_MS + i * STEP, {}) for i in range(13)]
    state.note_seen(summarise_seen(honest, NOW_MS / 1000))
    poisoned = [Record(ELEC_READING, "BAD", "D1", parse_ts("2099-06-01T00:00:00Z"), {})]
    state.note_seen(summarise_seen(poisoned, (NOW_MS + 60_000) / 1000))
    assert state.latest_event_ts() == NOW_MS + 60_000  # BAD counts up to its receive time
    state.close()


class Running:
    """An in-process service on a real Mosquitto with a fixed receive clock."""

    def __init__(self, broker: Mosquitto, data: Path, rows: list[dict[str, Any]]) -> None:
        env = {
            "MONITOR_MQTT_URL": broker.url,
            "MONITOR_DATA_DIR": str(data),
            "MONITOR_ALERTS__OFFLINE__GRACE_S": "0",
            "MONITOR_SCHEDULING__EVALUATE_CRON": "",
        }
        self.service = Service(load_settings(REPO / "config", env), clock=lambda: NOW_MS / 1000)
        self.parts: Components = self.service.start()
        if rows:
            self.parts.state.upsert_meters(parse_rows(rows).rows)
        assert self.parts.worker.wait_connected(15)
        self.dead = Collector(broker.url, "monitor/deadletter", client_id="poison-dead")
        self.pub = Publisher(broker.url, client_id="poison-pub")
        self.api = TestClient(self.service.app())

    def send(self, topic: str, body: dict[str, Any]) -> None:
        self.pub.send(topic, body)

    def settle(self, processed: int, letters: int) -> None:
        self.pub.wait_all()
        wait_for(lambda: self.parts.worker.processed >= processed, 30, f"{processed} processed")
        wait_for(lambda: len(self.dead.messages) >= letters, 30, f"{letters} dead letters")

    def rejected(self, reason: str) -> float:
        registry = self.service.metrics.registry
        return registry.get_sample_value("monitor_messages_rejected_total", {"reason": reason}) or 0

    def close(self) -> None:
        self.pub.close()
        self.dead.close()
        self.service.stop()


@pytest.fixture
def running(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Running]:
    rows = [
        {"meter_id": "M1", "kind": "elec", "district": "TA1"},
        {"meter_id": "M2", "kind": "elec", "district": "TA1"},
    ]
    r = Running(mosquitto, tmp_path / "data", rows)
    yield r
    r.close()


def test_one_future_dated_meter_moves_nothing(running: Running) -> None:
    for i in range(13):  # both meters report up to the receive clock
        running.send(*reading(i, meter="M1", district="TA1"))
        running.send(*reading(i, meter="M2", district="TA1"))
    topic = "meters/elec/TA1/M2/reading"
    running.send(topic, {"ts": "2099-06-01T00:00:00Z", "energy_kwh": 200.0})
    running.send(topic, {"ts": parse_ts("2050-01-01T00:00:00Z"), "energy_kwh": 201.0})
    running.settle(28, 2)
    letters = running.dead.json()
    assert [d["reason"] for d in letters] == ["future_timestamp", "future_timestamp"]
    assert "2099-06-01T00:00:00Z" in letters[0]["detail"]
    assert running.rejected("future_timestamp") == 2
    state = running.parts.state
    seen = state.seen("M2")
    assert seen is not None and seen["last_ts"] == NOW_MS
    assert running.parts.evaluator.default_as_of() == NOW_MS
    # the offline check and the default pass run as of the honest present
    assert running.service.check_offline() == 0
    summary = running.api.post("/api/evaluate").json()
    assert summary["as_of"] == format_ts(NOW_MS)


def test_an_evaluation_in_the_future_is_refused_unless_forced(running: Running) -> None:
    running.send(*reading(0, meter="M1", district="TA1"))
    running.settle(1, 0)
    far = running.api.post("/api/evaluate", params={"as_of": "2099-06-01T00:00:00Z"})
    assert far.status_code == 400
    assert "after the receive clock" in far.json()["detail"] and "force" in far.json()["detail"]
    soon = running.api.post("/api/evaluate", params={"as_of": NOW_MS + 1})
    assert soon.status_code == 400
    assert running.api.post("/api/evaluate", params={"as_of": NOW_MS}).status_code == 200
    forced = running.api.post(
        "/api/evaluate", params={"as_of": "2099-06-01T00:00:00Z", "force": "true"}
    )
    assert forced.status_code == 200 and forced.json()["as_of"].startswith("2099-06-01")


def test_implausible_values_are_dead_lettered_through_the_broker(running: Running) -> None:
    running.send(*reading(0, meter="M1", district="TA1"))
    topic = "meters/elec/TA1/M1/reading"
    running.send(topic, {"ts": BASE_MS + STEP, "energy_kwh": 1e300})
    running.send(topic, {"ts": BASE_MS + 2 * STEP, "energy_kwh": 101.0, "current_a": 1e6})
    running.settle(3, 2)
    assert [d["reason"] for d in running.dead.json()] == ["out_of_range", "out_of_range"]
    assert running.rejected("out_of_range") == 2
    points = running.parts.store.history(ELEC_READING, "M1", ["energy_kwh"], None, None, 10)
    assert [p.ts_ms for p in points] == [BASE_MS]


# -- item 3: a registered meter under another district's topic ---------------------------------


def test_a_registered_meter_under_another_district_is_dead_lettered_and_alerted(
    running: Running,
) -> None:
    for i in range(4):
        running.send(*reading(i, meter="M1", district="TA1"))
    for i in range(4, 7):
        running.send(*reading(i, meter="M1", district="TA2"))  # re-wired, or spoofed
    running.send(*reading(0, meter="U1", district="TA2"))  # unregistered: stored as sent
    running.settle(8, 3)
    letters = running.dead.json()
    assert [d["reason"] for d in letters] == ["district_mismatch"] * 3
    assert "registered in district 'TA1'" in letters[0]["detail"]
    assert running.rejected("district_mismatch") == 3
    state, store = running.parts.state, running.parts.store
    seen = state.seen("M1")
    assert seen is not None and seen["district"] == "TA1"  # it did not flip
    assert "M1" not in store.series(ELEC_READING, ["energy_kwh"], 0, NOW_MS, district="TA2")
    assert "U1" in store.series(ELEC_READING, ["energy_kwh"], 0, NOW_MS, district="TA2")
    assert running.service.check_mismatches() == 1
    [alert] = running.parts.alerts.list("open", None, None, 0, 10)
    assert (alert["rule"], alert["meter"], alert["severity"]) == (
        "ingest.district_mismatch",
        "M1",
        "major",
    )
    assert alert["evidence"]["messages"] == 3 and alert["district"] == "TA1"
    assert running.service.check_mismatches() == 0  # nothing new: no repeat, no flood
    running.send(*reading(7, meter="M1", district="TA2"))
    running.settle(9, 4)
    assert running.service.check_mismatches() == 1  # new evidence: the alert repeats
    [again] = running.parts.alerts.list("open", None, None, 0, 10)
    assert again["count"] == 2 and again["evidence"]["messages"] == 4


def test_the_district_map_follows_registry_changes(running: Running) -> None:
    running.parts.state.upsert_meters(
        parse_rows([{"meter_id": "M9", "kind": "elec", "district": "TA1"}]).rows
    )
    running.send(*reading(0, meter="M9", district="TA2"))
    running.settle(1, 1)
    assert running.dead.json()[0]["reason"] == "district_mismatch"
    # the meter was re-wired and the registry says so: now TA2 is right
    running.parts.state.upsert_meters(
        parse_rows([{"meter_id": "M9", "kind": "elec", "district": "TA2"}]).rows
    )
    running.send(*reading(1, meter="M9", district="TA2"))
    running.settle(2, 1)
    wait_for(lambda: running.parts.state.seen("M9") is not None, 10, "M9 seen")
    seen = running.parts.state.seen("M9")
    assert seen is not None and seen["district"] == "TA2" and len(running.dead.messages) == 1


def test_a_registry_import_by_another_process_reaches_the_running_worker(
    running: Running, tmp_path: Path
) -> None:
    running.send(*reading(0, meter="M7", district="TA1"))  # unregistered yet: stored
    running.settle(1, 0)
    other = SqliteState(tmp_path / "data" / "state.sqlite")  # as `monitor registry import`
    other.upsert_meters(parse_rows([{"meter_id": "M7", "kind": "elec", "district": "TA3"}]).rows)
    other.close()
    running.send(*reading(1, meter="M7", district="TA1"))
    running.settle(2, 1)
    assert [d["reason"] for d in running.dead.json()] == ["district_mismatch"]
