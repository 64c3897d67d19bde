"""The fixtures run real services: MQTT round trips, persistence, InfluxDB writes/reads."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.services import InfluxStack, Mosquitto

# --------------------------------------------------------------------------- MQTT helpers


class Collector:
    """Collects received messages; ``wait(n)`` blocks until n distinct payloads arrived."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self._cond = threading.Condition()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.payloads.append(bytes(msg.payload))
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 15.0) -> set[bytes]:
        with self._cond:
            self._cond.wait_for(lambda: len(set(self.payloads)) >= n, timeout=timeout)
            return set(self.payloads)


def new_client(
    client_id: str, protocol: MQTTProtocolVersion = mqtt.MQTTv311, **kw: Any
) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kw)


def connect(client: mqtt.Client, broker: Mosquitto, **kw: Any) -> bool:
    """Connect, start the network loop, wait for CONNACK; returns session_present."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        result.update(rc=rc, session_present=flags.session_present)
        done.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port, keepalive=30, **kw)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    assert not result["rc"].is_failure, result["rc"]
    return bool(result["session_present"])


def subscribe(client: mqtt.Client, topic: str, qos: int = 1) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos)
    assert done.wait(10), "no SUBACK"


def disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


# --------------------------------------------------------------------------- MQTT tests


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_mqtt_qos1_round_trip(mosquitto: Mosquitto) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    got = Collector()
    sub = new_client("rt-sub")
    sub.on_message = got.on_message
    pub = new_client("rt-pub")
    try:
        connect(sub, mosquitto)
        subscribe(sub, "meters/+/state")
        connect(pub, mosquitto)
        pub.publish("meters/m1/state", b"hello", qos=1).wait_for_publish(10)
        assert got.wait(1) == {b"hello"}
    finally:
        disconnect(pub)
        disconnect(sub)


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_persistent_session_survives_broker_restart(
    mosquitto: Mosquitto, protocol: MQTTProtocolVersion
) -> None:
    """Messages queued for an offline persistent session survive a broker restart."""
    topic, n = "meters/persist/state", 100
    client_kw: dict[str, Any] = {}
    connect_kw: dict[str, Any] = {}
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's Properties is untyped
        props.SessionExpiryInterval = 3600
        # clean_start=False already on the FIRST connect: mosquitto 2.0.11 keeps a v5
        # session opened with clean_start=True (paho's default, MQTT_CLEAN_START_FIRST_ONLY)
        # in memory, but does not write it to the persistence db, so it is lost on restart.
        connect_kw = {"clean_start": False, "properties": props}
    else:
        client_kw = {"clean_session": False}

    sub = new_client("persist-sub", protocol, **client_kw)
    try:
        assert not connect(sub, mosquitto, **connect_kw)
        subscribe(sub, topic)
    finally:
        disconnect(sub)

    pub = new_client("persist-pub", protocol)
    try:
        connect(pub, mosquitto)
        infos = [pub.publish(topic, f"msg-{i}".encode(), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        disconnect(pub)

    mosquitto.restart()

    got = Collector()
    sub = new_client("persist-sub", protocol, **client_kw)
    sub.on_message = got.on_message
    try:
        assert connect(sub, mosquitto, **connect_kw), "session not restored after restart"
        received = got.wait(n)
    finally:
        disconnect(sub)
    assert received == {f"msg-{i}".encode() for i in range(n)}
    assert (mosquitto.persistence_dir / "mosquitto.db").is_file()


# --------------------------------------------------------------------------- InfluxDB tests


def v2_client(influx: InfluxStack) -> InfluxDBClient:
    return InfluxDBClient(url=influx.url, token=influx.token, org=influx.org, enable_gzip=True)


def write(
    influx: InfluxStack,
    lines: list[str],
    *,
    bucket: str | None = None,
    precision: str = WritePrecision.MS,
) -> None:
    with v2_client(influx) as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=bucket or influx.bucket,
            org=influx.org,
            record=lines,
            write_precision=precision,
        )


def adapter_query(influx: InfluxStack, q: str) -> list[list[Any]]:
    r = httpx.get(
        f"{influx.url}/query", params={"db": influx.db, "q": q, "epoch": "ms"}, timeout=10
    )
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    return [v for s in result.get("series", []) for v in s["values"]]


T0 = 1_700_000_000_000  # ms


@pytest.mark.influxdb
@pytest.mark.timeout(60)
def test_v2_client_write_gzip_ms_then_query_back(influxdb: InfluxStack) -> None:
    lines = [
        f'm,meter=e1,kind=electricity energy_wh=1234.5,pulses=42i,ok=true,fw="1.2" {T0}',
        f'm,meter=e1,kind=electricity energy_wh=1240.25,pulses=43i,ok=false,fw="1.2" {T0 + 1500}',
        f'm,meter=t9,kind=taxi energy_wh=0.5,pulses=1i,ok=true,fw="x y" {T0 + 7}',
    ]
    write(influxdb, lines)

    rows = adapter_query(
        influxdb,
        f"SELECT energy_wh, pulses, ok, fw FROM m WHERE meter = 'e1' "
        f"AND time >= {T0}ms AND time < {T0 + 10_000}ms ORDER BY time",
    )
    assert rows == [
        [T0, 1234.5, 42, True, "1.2"],
        [T0 + 1500, 1240.25, 43, False, "1.2"],
    ]
    assert adapter_query(influxdb, "SELECT count(pulses) FROM m") == [[0, 3]]
    # The fixture's direct query agrees with the adapter's pass-through.
    assert influxdb.rows("SELECT pulses FROM m WHERE meter = 't9'") == [
        {"time": T0 + 7, "pulses": 1}
    ]


@pytest.mark.influxdb
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("precision", "stamp"),
    [
        (WritePrecision.S, T0 // 1000),
        (WritePrecision.MS, T0),
        (WritePrecision.US, T0 * 1000),
        (WritePrecision.NS, T0 * 1_000_000),
    ],
)
def test_precision_mapping_and_bucket_without_rp(
    influxdb: InfluxStack, precision: str, stamp: int
) -> None:
    write(influxdb, [f"p v=1 {stamp}"], bucket="meters", precision=precision)
    assert adapter_query(influxdb, "SELECT v FROM p") == [[T0, 1.0]]


@pytest.mark.influxdb
@pytest.mark.timeout(60)
def test_adapter_forwards_upstream_errors_and_routes(influxdb: InfluxStack) -> None:
    with pytest.raises(ApiException) as bad_line:
        write(influxdb, ["m energy_wh="])
    assert bad_line.value.status == 400
    assert "unable to parse" in (bad_line.value.body or "")

    with pytest.raises(ApiException) as no_db:
        write(influxdb, [f"m v=1 {T0}"], bucket="nosuchdb/autogen")
    assert no_db.value.status == 404

    url = influxdb.url
    assert httpx.get(f"{url}/ping").status_code == 204
    health = httpx.get(f"{url}/health")
    assert (health.status_code, health.json()["status"]) == (200, "pass")
    assert httpx.get(f"{url}/api/v2/buckets").status_code == 404
    posted = httpx.post(f"{url}/query", data={"q": "SHOW DATABASES"})
    assert ["meters"] in posted.json()["results"][0]["series"][0]["values"]


@pytest.mark.influxdb
@pytest.mark.timeout(90)
def test_write_fails_while_influxdb_down_and_works_after_restart(influxdb: InfluxStack) -> None:
    write(influxdb, [f"m v=1 {T0}"])
    influxdb.server.stop()

    with pytest.raises(ApiException) as down:
        write(influxdb, [f"m v=2 {T0 + 1}"])
    assert down.value.status == 503
    assert httpx.get(f"{influxdb.url}/health").status_code == 503

    started = time.monotonic()
    influxdb.server.start()
    assert time.monotonic() - started < 30
    assert httpx.get(f"{influxdb.url}/health").status_code == 200
    write(influxdb, [f"m v=3 {T0 + 2}"])
    assert adapter_query(influxdb, "SELECT v FROM m") == [[T0, 1.0], [T0 + 2, 3.0]]

    influxdb.server.restart()  # data survives a restart on the same port
    assert adapter_query(influxdb, "SELECT v FROM m") == [[T0, 1.0], [T0 + 2, 3.0]]
