"""The ingest worker against a real Mosquitto: store, dead-letter, acknowledge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import Settings, load_settings
from monitor.ingest import IngestWorker
from monitor.metrics import Metrics
from monitor.mqtt import parse_broker_url
from monitor.schema import ELEC_READING, TAXI_STATUS, TAXI_TRIP
from monitor.state import SqliteState
from monitor.store.embedded import EmbeddedStore
from tests.helpers import BASE_MS, Collector, Publisher, reading, wait_for
from tests.services import Mosquitto


class Rig:
    """A worker with an embedded store on a real broker."""

    def __init__(self, broker: Mosquitto, data: Path, client_id: str = "worker-test") -> None:
        self.settings: Settings = load_settings(
            data / "no-config",
            {
                "MONITOR_MQTT_URL": broker.url,
                "MONITOR_DATA_DIR": str(data),
                "MONITOR_MQTT__CLIENT_ID": client_id,
            },
        )
        self.metrics = Metrics()
        self.store = EmbeddedStore(data / "telemetry.sqlite", self.metrics)
        self.state = SqliteState(data / "state.sqlite")
        self.worker = IngestWorker(
            self.settings.mqtt, parse_broker_url(broker.url), self.store, self.state, self.metrics
        )
        self.worker.start()
        assert self.worker.wait_connected(15), "worker did not connect"

    def readings(self, meter: str = "M1") -> list[tuple[int, float]]:
        pts = self.store.history(ELEC_READING, meter, ["energy_kwh"], None, None, 1_000_000)
        return [(p.ts_ms, p.values["energy_kwh"]) for p in pts]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0

    def close(self) -> None:
        self.worker.stop()
        self.store.close()
        self.state.close()


@pytest.fixture
def rig(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(mosquitto, tmp_path)
    yield r
    r.close()


def test_valid_telemetry_is_stored_once_in_event_time_order(rig: Rig, mosquitto: Mosquitto) -> None:
    pub = Publisher(mosquitto.url)
    order = [3, 0, 1, 1, 2, 5, 4, 4]  # disorder and duplicates are normal input
    for i in order:
        pub.send(*reading(i))
    pub.send(
        "meters/taxi/T1/trip",
        {
            "trip_id": "a",
            "start_ts": BASE_MS,
            "end_ts": BASE_MS + 600_000,
            "meter_km": 5.0,
            "fare_cny": 20,
            "tariff_version": "SH-2022",
        },
    )
    pub.send(
        "meters/taxi/T1/trip",
        {
            "trip_id": "a",
            "start_ts": BASE_MS,
            "end_ts": BASE_MS + 600_000,
            "meter_km": 5.0,
            "fare_cny": 20,
            "tariff_version": "SH-2022",
        },
    )
    pub.send(
        "meters/taxi/T1/status",
        {
            "ts": "2026-03-01T00:05:00+08:00",
            "seal": "intact",
            "tariff_version": "SH-2022",
            "pulses_per_km": 1000,
        },
    )
    pub.wait_all()
    wait_for(lambda: rig.worker.processed >= len(order) + 3, what="all messages processed")
    assert rig.readings() == [(BASE_MS + i * 900_000, 100 + 0.25 * i) for i in range(6)]
    assert len(rig.store.history(TAXI_TRIP, "T1", ["meter_km"], None, None, 10)) == 1
    status = rig.store.latest(TAXI_STATUS, "T1")
    assert status is not None and status.values["seal"] == "intact"
    seen = rig.state.seen("M1")
    assert (
        seen is not None and seen["last_ts"] == BASE_MS + 5 * 900_000 and seen["district"] == "TA1"
    )
    assert rig.metric("monitor_messages_received_total", kind="elec") == len(order)
    assert rig.metric("monitor_messages_received_total", kind="taxi") == 3
    pub.close()


MALFORMED: list[tuple[str, bytes, str]] = [
    ("meters/elec/TA1/M1/reading", b"{oops", "invalid_json"),
    ("meters/elec/TA1/M1/reading", b"\xff\xfe\xfa", "invalid_json"),
    ("meters/elec/TA1/M1/reading", b'{"energy_kwh": 1}', "invalid_payload"),
    ("meters/elec/TA1/M1/reading", b'{"ts": 1772294400000, "energy_kwh": "1"}', "invalid_payload"),
    ("meters/elec/TA1/M1/reading", b'{"ts": 1772294400000, "energy_kwh": NaN}', "invalid_payload"),
    ("meters/elec/TA1/M1/reading", b'{"ts": 1772294400000, "energy_kwh": -4}', "invalid_payload"),
    (
        "meters/elec/TA1/M1/reading",
        b'{"ts": 1772294400000, "energy_kwh": 1, "meter": "M9"}',
        "identity_mismatch",
    ),
    (
        "meters/elec/TA1/M1/reading",
        b'{"ts": 1772294400000, "energy_kwh": 1, "pad": "' + b"x" * 70_000 + b'"}',
        "oversized",
    ),
    ("meters/gas/TA1/M1/reading", b"{}", "unknown_topic"),
    ("meters/taxi/T1/event", b'{"ts": 1772294400000, "code": "nope"}', "invalid_payload"),
]


def test_a_thousand_malformed_messages_each_dead_lettered(rig: Rig, mosquitto: Mosquitto) -> None:
    dead = Collector(mosquitto.url, "monitor/deadletter")
    pub = Publisher(mosquitto.url)
    for n in range(1000):
        topic, payload, _ = MALFORMED[n % len(MALFORMED)]
        pub.send(topic, payload)
    pub.send(*reading(0))  # the worker is still alive after the flood
    pub.wait_all()
    wait_for(lambda: len(dead.messages) >= 1000, 60, "1000 dead letters")
    wait_for(lambda: len(rig.readings()) == 1, what="the valid reading after the flood")
    letters = dead.json()
    assert len(letters) == 1000
    for n, letter in enumerate(letters):  # QoS 1 on one connection keeps the order
        topic, payload, reason = MALFORMED[n % len(MALFORMED)]
        assert letter["topic"] == topic and letter["reason"] == reason and letter["detail"]
        if letter["encoding"] == "base64":
            assert payload == b"\xff\xfe\xfa"
        elif reason != "oversized":
            assert letter["payload"].encode() == payload
    for _, _, reason in MALFORMED:
        expected = sum(1 for n in range(1000) if MALFORMED[n % len(MALFORMED)][2] == reason)
        assert rig.metric("monitor_messages_rejected_total", reason=reason) == expected
    assert rig.metric("monitor_deadletters_published_total") == 1000
    dead.close()
    pub.close()


def test_broker_restart_mid_stream_loses_nothing(rig: Rig, mosquitto: Mosquitto) -> None:
    pub = Publisher(mosquitto.url)
    total = 3000
    for i in range(total // 2):
        pub.send(*reading(i))
    mosquitto.restart()  # while the first half is in flight to the worker
    for i in range(total // 2, total):
        pub.send(*reading(i))
    pub.wait_all(120)
    wait_for(lambda: len(rig.readings()) == total, 120, f"{total} stored readings")
    assert [ts for ts, _ in rig.readings()] == [BASE_MS + i * 900_000 for i in range(total)]
    pub.close()


def test_unacknowledged_messages_are_redelivered_to_the_next_worker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    first = Rig(mosquitto, tmp_path / "a", client_id="worker-redeliver")
    first.store.close()  # every write now fails: nothing may be acknowledged
    pub = Publisher(mosquitto.url)
    for i in range(50):
        pub.send(*reading(i))
    pub.wait_all()
    wait_for(
        lambda: first.metric("monitor_store_errors_total", backend="embedded") > 0,
        what="failed store writes",
    )
    first.worker.stop(drain_s=0.1)
    second = Rig(mosquitto, tmp_path / "b", client_id="worker-redeliver")  # same session
    wait_for(lambda: len(second.readings()) == 50, 30, "redelivered readings")
    second.close()
    first.state.close()
    pub.close()


def test_deadletter_body_for_binary_payload() -> None:
    from monitor.ingest import deadletter_body
    from monitor.telemetry import Rejection

    body = json.loads(
        deadletter_body("t", b"\x00\xff" * 10, Rejection("invalid_json", "x"), 0.0, 4)
    )
    assert body["encoding"] == "base64" and body["truncated_from_bytes"] == 20
    assert body["received_at"] == "1970-01-01T00:00:00.000+00:00"
