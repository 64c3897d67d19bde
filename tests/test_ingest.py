"""The ingest worker against a real Mosquitto: store, dead-letter, acknowledge."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.core.clock import DAY_MS
from monitor.core.schema import ELEC_READING, TAXI_STATUS, TAXI_TRIP, Record
from monitor.ingest.worker import IngestWorker, summarise_seen
from monitor.platform.config import Settings, load_settings
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import ack_all, connect_properties, make_client, parse_broker_url
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS, Collector, Publisher, reading, wait_for
from tests.services import Mosquitto


class Rig:
    """A worker with an embedded store on a real broker."""

    def __init__(
        self,
        broker: Mosquitto,
        data: Path,
        client_id: str = "worker-test",
        protocol: str = "5",
        **mqtt: str,
    ) -> None:
        env = {
            "MONITOR_MQTT_URL": broker.url,
            "MONITOR_DATA_DIR": str(data),
            "MONITOR_MQTT__CLIENT_ID": client_id,
            "MONITOR_MQTT__PROTOCOL": protocol,
        }
        env |= {f"MONITOR_MQTT__{key.upper()}": value for key, value in mqtt.items()}
        self.settings: Settings = load_settings(data / "no-config", env)
        self.metrics = Metrics()
        self.state = SqliteState(data / "state.sqlite")
        # As the service opens it: the store marks the days it wrote in the state.
        self.store = EmbeddedStore(data / "telemetry.sqlite", self.metrics, marks=self.state)
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


def test_ingest_marks_the_district_days_it_wrote_late_and_duplicates_too(
    rig: Rig, mosquitto: Mosquitto
) -> None:
    pub = Publisher(mosquitto.url)
    day0 = BASE_MS // DAY_MS  # BASE_MS is 16:00 UTC: reading 32 is the next UTC day
    for i in (0, 1, 40):
        pub.send(*reading(i))
    wait_for(lambda: rig.worker.processed >= 3, what="three readings")
    assert rig.state.marked_days("TA1", 0, 10**9) == {day0, day0 + 1}
    rig.state.save_day_summaries("TA1", {day0: b"", day0 + 1: b""}, rig.state.mark_sequence())
    pub.send(*reading(1))  # a duplicate
    topic, late = reading(-170, meter="M2", district="TB")  # late: two days back
    pub.send(topic, late | {"seq": 1})
    wait_for(lambda: rig.worker.processed >= 5, what="two more")
    assert rig.state.marked_days("TA1", 0, 10**9) == {day0}
    assert rig.state.marked_days("TB", 0, 10**9) == {day0 - 2}
    pub.close()


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


PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"])


@PROTOCOLS
def test_unacknowledged_messages_are_redelivered_to_the_next_worker(
    mosquitto: Mosquitto, tmp_path: Path, protocol: str
) -> None:
    first = Rig(mosquitto, tmp_path / "a", client_id="worker-redeliver", protocol=protocol)
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
    second = Rig(mosquitto, tmp_path / "b", "worker-redeliver", protocol)  # same session
    wait_for(lambda: len(second.readings()) == 50, 30, "redelivered readings")
    second.close()
    first.state.close()
    pub.close()


@PROTOCOLS
def test_acknowledged_messages_are_not_delivered_again(
    mosquitto: Mosquitto, tmp_path: Path, protocol: str
) -> None:
    """The batched PUBACKs reach the broker: a worker on the same session gets only new messages."""
    first = Rig(mosquitto, tmp_path / "a", "worker-acks", protocol)
    pub = Publisher(mosquitto.url)
    for i in range(2500):  # several batches
        pub.send(*reading(i))
    pub.wait_all()
    wait_for(lambda: first.worker.processed >= 2500, 60, "2500 processed")
    first.close()
    second = Rig(mosquitto, tmp_path / "b", "worker-acks", protocol)
    pub.send(*reading(2500))
    pub.wait_all()
    wait_for(lambda: len(second.readings()) == 1, 30, "the new reading")
    second.close()
    assert first.worker.processed == 2500
    assert second.worker.processed == 1
    pub.close()


_CHILD = """
import sys, time
from pathlib import Path
from monitor.platform.config import load_settings
from monitor.ingest.worker import IngestWorker, summarise_seen
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import parse_broker_url
from monitor.store.state import SqliteState
from monitor.store.embedded import EmbeddedStore

url, data, client_id, protocol = sys.argv[1:]
env = {"MONITOR_MQTT_URL": url, "MONITOR_MQTT__CLIENT_ID": client_id,
       "MONITOR_MQTT__PROTOCOL": protocol, "MONITOR_MQTT__BATCH_MAX": "50"}
settings = load_settings(Path(data) / "no-config", env)
metrics = Metrics()
store = EmbeddedStore(Path(data) / "telemetry.sqlite", metrics)
state = SqliteState(Path(data) / "state.sqlite")
IngestWorker(settings.mqtt, parse_broker_url(url), store, state, metrics).start()
time.sleep(600)  # until killed
"""


def _stored(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM elec_reading").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


@PROTOCOLS
def test_a_killed_worker_loses_nothing(mosquitto: Mosquitto, tmp_path: Path, protocol: str) -> None:
    """SIGKILL mid-stream, restart on the same session and data: every reading is stored."""
    data, client_id, total = tmp_path / "data", "worker-killed", 4000
    Rig(mosquitto, data, client_id, protocol).close()  # the session, subscribed, offline
    pub = Publisher(mosquitto.url)
    for i in range(total // 2):
        pub.send(*reading(i))
    pub.wait_all()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mosquitto.url, str(data), client_id, protocol],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for(lambda: _stored(data / "telemetry.sqlite") > 0, 60, "the first stored batch")
    finally:
        child.kill()  # SIGKILL: no drain, no disconnect, no flush
        child.wait(10)
    for i in range(total // 2, total):  # queued for the offline session meanwhile
        pub.send(*reading(i))
    pub.wait_all()
    rig = Rig(mosquitto, data, client_id, protocol)
    wait_for(lambda: len(rig.readings()) == total, 60, f"{total} stored readings")
    assert [ts for ts, _ in rig.readings()] == [BASE_MS + i * 900_000 for i in range(total)]
    seen = rig.state.seen("M1")
    assert seen is not None and seen["last_ts"] == BASE_MS + (total - 1) * 900_000
    rig.close()
    pub.close()


def test_meters_seen_are_written_every_flush_and_on_stop(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Another process reads `seen` from the file: it is written while running and on stop."""
    rig = Rig(mosquitto, tmp_path, seen_flush_s="0.2")
    other = SqliteState(tmp_path / "state.sqlite")  # its own connection, no pending meters
    pub = Publisher(mosquitto.url)
    pub.send(*reading(0))
    pub.wait_all()
    wait_for(lambda: other.seen("M1") is not None, 30, "M1 written while the worker runs")
    rig.close()

    rig = Rig(mosquitto, tmp_path, client_id="worker-seen", seen_flush_s="300")
    for i in range(1, 4):
        pub.send(*reading(i, meter="M2"))
    pub.wait_all()
    wait_for(lambda: rig.worker.processed >= 3, 30, "3 processed")
    assert rig.state.seen("M2") is not None  # a read through the same state flushes first
    pub.send(*reading(9, meter="M3"))
    pub.wait_all()
    wait_for(lambda: rig.worker.processed >= 4, 30, "4 processed")
    rig.worker.stop()
    assert other.seen("M3") == {
        "kind": "elec",
        "district": "TA1",
        "first_ts": BASE_MS + 9 * 900_000,
        "last_ts": BASE_MS + 9 * 900_000,
        "messages": 1,
    }
    rig.store.close()
    rig.state.close()
    other.close()
    pub.close()


def test_seen_bookkeeping_merges_batches_and_reads_agree(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state.sqlite")
    recs = [
        Record(ELEC_READING, "E1", "D1", BASE_MS + 2, {"energy_kwh": 1.0}),
        Record(ELEC_READING, "E1", "D1", BASE_MS, {"energy_kwh": 1.0}),
        Record(TAXI_STATUS, "T1", "", BASE_MS + 5, {"seal": "intact"}),
    ]
    state.note_records(recs[:1], 1.0)
    state.note_records(recs[1:], 2.0)
    state.note_seen(summarise_seen([Record(ELEC_READING, "E1", "D1", BASE_MS + 9, {})], 3.0))
    assert state.seen("E1") == {
        "kind": "elec",
        "district": "D1",
        "first_ts": BASE_MS,
        "last_ts": BASE_MS + 9,
        "messages": 3,
    }
    assert state.all_seen() == {
        "E1": ("elec", "D1", BASE_MS + 9),
        "T1": ("taxi", None, BASE_MS + 5),
    }
    assert state.all_seen("taxi") == {"T1": ("taxi", None, BASE_MS + 5)}
    assert state.all_seen("elec") == {"E1": ("elec", "D1", BASE_MS + 9)}
    state.note_records(recs[:1], 4.0)
    state.close()  # flushes
    again = SqliteState(tmp_path / "state.sqlite")
    assert again.seen("E1") == {
        "kind": "elec",
        "district": "D1",
        "first_ts": BASE_MS,
        "last_ts": BASE_MS + 9,
        "messages": 4,
    }
    again.close()


def test_deadletter_body_for_binary_payload() -> None:
    from monitor.ingest.telemetry import Rejection
    from monitor.ingest.worker import deadletter_body

    body = json.loads(
        deadletter_body("t", b"\x00\xff" * 10, Rejection("invalid_json", "x"), 0.0, 4)
    )
    assert body["encoding"] == "base64" and body["truncated_from_bytes"] == 20
    assert body["received_at"] == "1970-01-01T00:00:00.000+00:00"


class _ManualAckSession:
    """A bare paho subscriber with manual acks on a persistent MQTT 5 session."""

    def __init__(self, mosquitto: Mosquitto, client_id: str) -> None:
        addr = parse_broker_url(mosquitto.url)
        self.mids: list[int] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = make_client(addr, client_id, "5", persistent=True, manual_ack=True)
        self.client.on_message = lambda _c, _u, msg: self._got(msg.mid)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe("acks/#", qos=1)
        self.client.connect(
            addr.host, addr.port, clean_start=False, properties=connect_properties(300, 1000)
        )
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _got(self, mid: int) -> None:
        with self._lock:
            self.mids.append(mid)

    def close(self) -> None:
        wait_for(lambda: not self.client.want_write(), 5, "queued acks written")
        gone = threading.Event()
        self.client.on_disconnect = lambda *_: gone.set()
        self.client.disconnect()
        assert gone.wait(10), "no clean disconnect"  # loop_stop before it may drop them
        self.client.loop_stop()


@pytest.mark.parametrize("batched", [True, False], ids=["one-buffer", "per-message"])
def test_ack_all_reaches_the_broker_either_way(mosquitto: Mosquitto, batched: bool) -> None:
    """Both paths of ack_all acknowledge exactly the mids given: the rest come back."""
    client_id = f"acker-{batched}"
    first = _ManualAckSession(mosquitto, client_id)
    pub = Publisher(mosquitto.url, f"ack-publisher-{batched}")
    for i in range(30):
        pub.send(f"acks/{i}", {"n": i})
    pub.wait_all()
    wait_for(lambda: len(first.mids) == 30, 10, "30 deliveries")
    ack_all(first.client, first.mids[:20], batched=batched)
    first.close()
    second = _ManualAckSession(mosquitto, client_id)
    wait_for(lambda: len(second.mids) >= 10, 10, "the 10 unacknowledged redelivered")
    time.sleep(0.5)  # and nothing more
    assert len(second.mids) == 10, second.mids
    ack_all(second.client, second.mids, batched=batched)
    second.close()
    pub.close()
