"""The InfluxDB backend against a real InfluxDB (1.6 behind the v2 write adapter)."""

from __future__ import annotations

from pathlib import Path

import httpx

from monitor.config import InfluxSettings
from monitor.ingest import IngestWorker
from monitor.metrics import Metrics
from monitor.mqtt import parse_broker_url
from monitor.schema import ELEC_EVENT, ELEC_READING, TAXI_TRIP, Record
from monitor.state import SqliteState
from monitor.store.influx import InfluxStore
from tests.helpers import BASE_MS, Publisher, reading, wait_for
from tests.services import InfluxStack, Mosquitto


def settings(stack: InfluxStack, **kw: object) -> InfluxSettings:
    return InfluxSettings(
        url=stack.url, token=stack.token, org=stack.org, bucket=stack.bucket, retry_max_s=0.5, **kw
    )  # type: ignore[arg-type]


def rec(i: int, meter: str = "M1", kwh: float | None = None) -> Record:
    return Record(
        ELEC_READING,
        meter,
        "TA1",
        BASE_MS + i * 900_000,
        {"energy_kwh": kwh if kwh is not None else 100.0 + i, "seq": i},
    )


def test_points_land_with_schema_and_duplicates_overwrite(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    store.write([rec(0), rec(1), rec(2)])
    store.write([rec(1), rec(0, meter="M2")])  # a duplicate and another meter
    store.write(
        [
            Record(ELEC_EVENT, "M1", "TA1", BASE_MS, {"code": "cover_open", "detail": "lid"}),
            Record(
                TAXI_TRIP,
                "T1",
                "",
                BASE_MS,
                {"trip_id": "x", "meter_km": 4.5, "tariff_version": "SH-2022"},
            ),
        ]
    )
    assert store.flush(20)
    rows = influxdb.rows("SELECT * FROM elec_reading WHERE meter = 'M1'")
    assert [(r["time"], r["energy_kwh"], r["seq"], r["district"]) for r in rows] == [
        (BASE_MS + i * 900_000, 100.0 + i, i, "TA1") for i in range(3)
    ]
    tags = influxdb.rows("SHOW TAG KEYS FROM elec_reading")
    assert {r["tagKey"] for r in tags} == {"meter", "district"}
    fields = {
        r["fieldKey"]: r["fieldType"] for r in influxdb.rows("SHOW FIELD KEYS FROM elec_reading")
    }
    assert fields == {"energy_kwh": "float", "seq": "integer"}
    event = influxdb.rows("SELECT * FROM elec_event")
    assert event[0]["code"] == "cover_open" and event[0]["detail"] == "lid"
    # reads go through /query on the adapter, as they would on InfluxDB 2.x
    hist = store.history(ELEC_READING, "M1", ["energy_kwh"], BASE_MS + 1, None, 100)
    assert [(p.ts_ms, p.values["energy_kwh"]) for p in hist] == [
        (BASE_MS + 900_000, 101.0),
        (BASE_MS + 1_800_000, 102.0),
    ]
    latest = store.latest(TAXI_TRIP, "T1")
    assert latest is not None and latest.values["meter_km"] == 4.5
    assert metrics.registry.get_sample_value("monitor_points_flushed_total") == 7
    store.close()


def test_influxdb_down_spools_then_drains_without_loss(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    store.write([rec(i) for i in range(10)])
    assert store.flush(20)
    influxdb.server.stop()
    for batch in range(20):
        store.write([rec(10 + batch * 50 + j) for j in range(50)])
    wait_for(
        lambda: "unreachable" in store.health().detail or "503" in store.health().detail,
        20,
        "the store to notice InfluxDB is down",
    )
    assert store.health().buffered_points > 0
    assert store.health().writable  # the spool still takes writes
    influxdb.server.start()
    assert store.flush(60), "spool did not drain after InfluxDB came back"
    count = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading")
    assert count[0]["count"] == 1010
    assert store.health().dropped_points == 0
    assert metrics.registry.get_sample_value("monitor_store_buffered_points") == 0
    store.close()


def test_spool_survives_a_restart_of_the_service(influxdb: InfluxStack, tmp_path: Path) -> None:
    influxdb.server.stop()
    first = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    first.write([rec(i) for i in range(100)])
    first.close()  # InfluxDB down: what is left stays on disk
    influxdb.server.start()
    second = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    assert second.flush(30)
    assert influxdb.rows("SELECT count(energy_kwh) FROM elec_reading")[0]["count"] == 100
    second.close()


def test_points_influxdb_refuses_for_good_are_counted_as_dropped(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    # A string field where the schema has a float: every later write of it conflicts.
    httpx.post(
        f"{influxdb.server.url}/write",
        params={"db": influxdb.db},
        content=f'elec_reading,meter=X energy_kwh="text" {BASE_MS}000000',
    ).raise_for_status()
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    store.write([rec(1)])
    wait_for(lambda: store.health().dropped_points == 1, 20, "the refused point to be counted")
    assert metrics.registry.get_sample_value("monitor_store_dropped_points_total") == 1
    store.write(
        [
            Record(
                TAXI_TRIP,
                "T1",
                "",
                BASE_MS,
                {"trip_id": "y", "meter_km": 1.0, "tariff_version": "v"},
            )
        ]
    )
    assert store.flush(20)  # the spool is not stuck behind the refused batch
    store.close()


def test_worker_to_influxdb_end_to_end(
    influxdb: InfluxStack, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from monitor.config import load_settings

    s = load_settings(tmp_path / "none", {"MONITOR_MQTT_URL": mosquitto.url})
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    state = SqliteState(tmp_path / "state.sqlite")
    worker = IngestWorker(s.mqtt, parse_broker_url(mosquitto.url), store, state, metrics)
    worker.start()
    assert worker.wait_connected(15)
    pub = Publisher(mosquitto.url)
    for i in range(500):
        pub.send(*reading(i, meter=f"M{i % 5}"))
    pub.wait_all()
    wait_for(lambda: worker.processed >= 500, 30, "500 processed")
    assert store.flush(30)
    counts = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading GROUP BY meter")
    assert sorted((r["meter"], r["count"]) for r in counts) == [(f"M{m}", 100) for m in range(5)]
    worker.stop()
    store.close()
    state.close()
    pub.close()
