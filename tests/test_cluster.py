"""A cluster as it runs: real Mosquitto, InfluxDB and PostgreSQL, three `monitor run`
processes in one shared group on one state; workers killed with SIGKILL mid-stream and
mid-pass. And one worker through a PostgreSQL outage."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from monitor.platform.access import token_hash
from monitor.simulate import Fleet, FleetSpec
from tests.conftest import _require
from tests.helpers import Collector, Publisher, reading, wait_for
from tests.services import InfluxStack, Mosquitto, PostgreSQL, find_postgres
from tests.test_service import MonitorProcess

START = 1772294400000
DAYS = 6


def registry_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


OPERATOR, AUTHORITY = "operator-token-cluster-test", "authority-token-cluster-test"


def access_file(folder: Path) -> Path:
    """The API under access control: an operator and a supervision authority."""
    path = folder / "access.yaml"
    tokens = [
        {"name": "ops", "role": "operator", "scope": ["*"], "sha256": token_hash(OPERATOR)},
        {
            "name": "inspector.li",
            "role": "authority",
            "scope": ["*"],
            "sha256": token_hash(AUTHORITY),
        },
    ]
    path.write_text(yaml.safe_dump({"tokens": tokens}), encoding="utf-8")
    return path


@pytest.fixture
def workers(
    mosquitto: Mosquitto, influxdb: InfluxStack, postgres_url: str, tmp_path: Path
) -> Iterator[list[MonitorProcess]]:
    made = []
    access = access_file(tmp_path)
    for i in (1, 2, 3):
        env = {
            "MONITOR_MQTT_URL": mosquitto.url,
            "MONITOR_STORE": "influxdb",
            "MONITOR_INFLUX_URL": influxdb.url,
            "MONITOR_INFLUX_TOKEN": influxdb.token,
            "MONITOR_INFLUX_ORG": influxdb.org,
            "MONITOR_INFLUX_BUCKET": influxdb.bucket,
            "MONITOR_STATE_URL": postgres_url,
            "MONITOR_MQTT__SHARED_GROUP": "workers",
            "MONITOR_MQTT__CLIENT_ID": f"w{i}",
            "MONITOR_STATE__LEASE_S": "3",
            "MONITOR_STATE__PARTITION_SIZE": "1",
            "MONITOR_SCHEDULING__EVALUATE_CRON": "",
            "MONITOR_ALERTS__OFFLINE__GRACE_S": "100000",  # this test is about the pass
            "MONITOR_ACCESS_FILE": str(access),
        }
        (tmp_path / f"w{i}").mkdir()
        made.append(MonitorProcess(tmp_path / f"w{i}", env))
        made[-1].token = OPERATOR
    yield made
    for m in made:
        m.stop()


def stored_points(influxdb: InfluxStack) -> int:
    total = 0
    for measurement in ("elec_reading", "elec_event", "taxi_trip", "taxi_status", "taxi_event"):
        rows = influxdb.rows(f'SELECT count(*) FROM "{measurement}"')
        total += max((v for r in rows for k, v in r.items() if k.startswith("count_")), default=0)
    return total


def points_of(influxdb: InfluxStack, measurement: str) -> int:
    rows = influxdb.rows(f'SELECT count(*) FROM "{measurement}"')
    return max((v for r in rows for k, v in r.items() if k.startswith("count_")), default=0)


def meters_page(m: MonitorProcess) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = m.get("/api/meters", **params).json()
        items += page["items"]
        if not (cursor := page["next"]):
            return items


def test_three_workers_one_truth_through_kills_mid_stream_and_mid_pass(
    workers: list[MonitorProcess],
    mosquitto: Mosquitto,
    influxdb: InfluxStack,
    postgres_url: str,
) -> None:
    for w in workers:
        w.start()
    first, second, third = workers
    fleet = Fleet(
        FleetSpec(start_ms=START, districts=8, meters_per_district=(6, 8), taxis=0, seed=5)
    )
    csv_text = registry_csv(fleet.registry_rows())
    anonymous = httpx.post(f"http://{second.http}/api/registry", content=csv_text, timeout=30)
    assert anonymous.status_code == 401, anonymous.text  # access control is on
    r = httpx.post(
        f"http://{second.http}/api/registry",
        content=csv_text,
        headers={"content-type": "text/csv", **second.auth()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    readings = [
        m
        for m in fleet.messages(START, START + DAYS * 86_400_000)
        if m.topic.split("/")[1] == "elec" and m.topic.endswith("/reading")
    ]
    alerts = Collector(mosquitto.url, "monitor/alerts/#", "alert-watcher")
    pub = Publisher(mosquitto.url, "cluster-publisher")

    # Mid-stream: one worker killed after the others have stored part of the stream,
    # then started again under its client id (its session keeps its share).
    half = len(readings) // 2
    for m in readings[:half]:
        pub.send(m.topic, m.payload)
    wait_for(lambda: third.metric("monitor_points_written_total") > 50, 60, "w3 storing")
    third.kill()
    for m in readings[half:]:
        pub.send(m.topic, m.payload)
    pub.wait_all(120)
    third.start()
    unique = {(m.topic, json.loads(m.payload)["ts"]) for m in readings}
    wait_for(
        lambda: points_of(influxdb, "elec_reading") == len(unique),
        120,
        f"{len(unique)} distinct readings stored",
    )
    assert all(w.metric("monitor_messages_received_total") > 0 for w in workers)

    # Mid-pass: the pass is requested from one worker; another is killed while it holds
    # a partition; its lease runs out and the others finish the pass. The test holds the
    # staging table locked meanwhile, so no partition can complete: the asking worker
    # cannot finish the pass alone before the others join it (they look for a running
    # pass once a second), and the partition a helper holds is still held when the test
    # sees it. Claims and leases live in another table and go on.
    with (
        psycopg.connect(postgres_url, autocommit=True) as db,
        psycopg.connect(postgres_url) as gate,
    ):
        gate.execute("LOCK TABLE pass_decisions IN EXCLUSIVE MODE")
        answer: dict[str, Any] = {}

        def request() -> None:
            answer["r"] = httpx.post(
                f"http://{first.http}/api/evaluate", timeout=300, headers=first.auth()
            )

        asking = threading.Thread(target=request)
        asking.start()

        victim: list[str] = []

        def a_helper_holds_one() -> bool:
            found = db.execute(
                "SELECT owner FROM pass_partitions WHERE owner IN ('w2', 'w3') "
                "AND status = 'todo' LIMIT 1"
            ).fetchone()
            victim.extend(found or ())
            return bool(found)

        try:
            wait_for(a_helper_holds_one, 60, "another worker holding a partition")
            killed = second if victim[0] == "w2" else third
            killed.kill()
        finally:
            gate.rollback()  # the lock goes: the pass goes on without the killed worker
        asking.join(300)
        taken = db.execute(
            "SELECT count(*) FROM pass_partitions WHERE attempts > 1 AND status = 'done'"
        ).fetchone()
        passes = db.execute("SELECT count(*), min(status) FROM passes").fetchone()
    r = answer["r"]
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["districts"] == 8 and summary["meters"] > 0
    assert taken is not None and taken[0] >= 1, "no partition was taken over"
    assert passes == (1, "done")

    # One truth: the survivors and the restarted worker answer the same.
    killed.start()
    views = [meters_page(w) for w in workers]
    assert views[0] == views[1] == views[2]
    assert sum(1 for m in views[0] if m["decision"]) == summary["meters"]
    districts = [w.get("/api/districts", limit=100).json() for w in workers]
    assert districts[0] == districts[1] == districts[2]

    # Each alert opened once, and each notified once, whoever delivered it.
    opened = first.get("/api/alerts", limit=1000).json()["items"]
    assert opened
    wait_for(lambda: len(alerts.json()) >= len(opened), 30, "every opening notified")
    time.sleep(3)  # a duplicate would arrive within the outbox's next ticks
    notified = Counter((a["id"], a["action"]) for a in alerts.json())
    assert set(notified) == {(a["id"], "opened") for a in opened}
    assert max(notified.values()) == 1

    # An acknowledgement through one worker is seen through the others, and the audit
    # log they share records it once, in one chain.
    target = opened[0]["id"]
    ack = httpx.post(
        f"http://{third.http}/api/alerts/{target}/ack",
        json={"comment": "on site tomorrow"},
        headers=third.auth(AUTHORITY),
        timeout=10,
    )
    assert ack.status_code == 200, ack.text
    for w in (first, second):
        seen = w.get(f"/api/alerts/{target}").json()
        assert seen["status"] == "acknowledged"
        assert seen["history"][-1]["actor"] == "inspector.li"
    wait_for(
        lambda: (target, "acknowledged") in {(a["id"], a["action"]) for a in alerts.json()},
        30,
        "the acknowledgement notified",
    )
    records = httpx.get(
        f"http://{first.http}/api/audit", params={"limit": 1000}, headers=first.auth(AUTHORITY)
    ).json()["items"]
    acks = [r for r in records if r["action"] == "alert.ack"]
    assert [(r["actor"], r["subject"]) for r in acks] == [("inspector.li", f"alert:{target}")]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all(b["prev"] == a["hash"] for a, b in pairwise(records))
    alerts.close()
    pub.close()


def test_a_postgresql_outage_loses_no_telemetry_and_the_api_says_why(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    _require(find_postgres, "initdb", "postgresql")
    pg = PostgreSQL()  # its own server: this test stops it
    worker = None
    try:
        pg.start()
        url = pg.create_database("outage")
        worker = MonitorProcess(
            tmp_path,
            {"MONITOR_MQTT_URL": mosquitto.url, "MONITOR_STATE_URL": url,
             "MONITOR_STATE__TIMEOUT_S": "1"},
        )  # fmt: skip
        worker.start()
        pub = Publisher(mosquitto.url)
        for i in range(50):
            pub.send(*reading(i, meter="P1"))
        pub.wait_all(30)
        wait_for(lambda: worker.get("/api/meters/P1").status_code == 200, 30, "P1 known")

        pg.stop()
        health = worker.get("/healthz")
        assert health.status_code == 503
        assert health.json()["state"]["available"] is False
        down = worker.get("/api/meters")
        assert down.status_code == 503 and "state store unavailable" in down.json()["detail"]
        for i in range(50, 150):  # telemetry goes on meanwhile
            pub.send(*reading(i, meter="P1"))
        pub.wait_all(30)
        wait_for(lambda: worker.metric("monitor_points_written_total") >= 150, 30, "150 stored")
        assert worker.proc is not None and worker.proc.poll() is None
        # The days those readings wrote wait on disk to be marked in the state.
        assert worker.metric("monitor_day_marks_pending") > 0

        pg.start()
        wait_for(lambda: worker.get("/healthz").status_code == 200, 60, "state back")
        history = worker.get("/api/meters/P1/history", limit=1000).json()["points"]
        assert len(history) == 150
        wait_for(
            lambda: worker.get("/api/meters/P1").json()["seen"]["messages"] == 150,
            30,
            "the meters seen during the outage written",
        )
        wait_for(lambda: worker.metric("monitor_day_marks_pending") == 0, 30, "marks delivered")
        pub.close()
    finally:
        if worker is not None:
            worker.stop()
        pg.cleanup()
