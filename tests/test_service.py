"""The `monitor` command as a user runs it: real processes, real brokers, real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.core.clock import parse_ts
from monitor.core.registry import parse_csv
from monitor.simulate import Fleet, FleetSpec
from tests.helpers import Publisher, reading, stored_rows, wait_for
from tests.services import Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent


class MonitorProcess:
    """`python -m monitor run` in a subprocess with its own data dir and ports."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.http = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "MONITOR_CONFIG": str(REPO / "config"),
            "MONITOR_DATA_DIR": str(tmp / "data"),
            "MONITOR_HTTP": self.http,
            **env,
        }
        self.log = tmp / "monitor.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        wait_for(self.ready, 30, f"healthz of monitor run (log: {self.log.read_text()[-2000:]})")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"monitor exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://{self.http}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, **params: str | int | float | bool | None) -> httpx.Response:
        return httpx.get(f"http://{self.http}{path}", params=params, timeout=10)

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def monitor_on(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[MonitorProcess]:
    m = MonitorProcess(tmp_path, {"MONITOR_MQTT_URL": mosquitto.url})
    yield m
    m.stop()


def stored(m: MonitorProcess, meter: str) -> int:
    r = m.get(f"/api/meters/{meter}/history", limit=100_000)
    return len(r.json()["points"]) if r.status_code == 200 else 0


def stored_all(m: MonitorProcess, meter: str, expected: int) -> bool:
    return stored(m, meter) == expected


def test_killed_worker_loses_nothing(monitor_on: MonitorProcess, mosquitto: Mosquitto) -> None:
    monitor_on.start()
    pub = Publisher(mosquitto.url)
    per_meter, meters = 4000, 4
    for i in range(per_meter):
        for k in range(meters):
            pub.send(*reading(i, meter=f"K{k}"))
    wait_for(
        lambda: monitor_on.metric("monitor_points_written_total") > 2000, 60, "some points stored"
    )
    monitor_on.kill()  # SIGKILL mid-stream: no drain, no goodbye
    pub.wait_all(120)
    monitor_on.start()  # same client id, same persistent session
    for k in range(meters):
        meter = f"K{k}"
        wait_for(partial(stored_all, monitor_on, meter, per_meter), 120, f"all readings of {meter}")
    pub.close()


def test_run_on_embedded_defaults_serves_what_meters_send(tmp_path: Path) -> None:
    port = free_port()
    m = MonitorProcess(tmp_path, {"MONITOR_EMBEDDED_MQTT": f"127.0.0.1:{port}"})
    m.env.pop("MONITOR_MQTT_URL", None)
    m.env.pop("MONITOR_STORE", None)
    try:
        m.start()
        pub = Publisher(f"mqtt://127.0.0.1:{port}")
        for i in range(10):
            pub.send(*reading(i, meter="EMB1", district="TA7"))
        pub.send("meters/elec/TA7/EMB1/reading", b"not json")
        pub.wait_all()
        wait_for(lambda: stored(m, "EMB1") == 10, 30, "10 readings via the embedded broker")
        items = m.get("/api/meters").json()["items"]
        assert [(i["meter_id"], i["registered"], i["district"]) for i in items] == [
            ("EMB1", False, "TA7")
        ]
        wait_for(
            lambda: m.metric('monitor_messages_rejected_total{reason="invalid_json"}') == 1,
            10,
            "the rejected message counted",
        )
        assert (tmp_path / "data" / "telemetry.sqlite").exists()
        pub.close()
    finally:
        m.stop()
    log = m.log.read_text()
    # Nothing probes the broker with a bare TCP connection it would log as a broken client.
    assert "ERROR" not in log and "No data" not in log, log


def test_simulated_fleet_through_mosquitto(
    monitor_on: MonitorProcess, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    monitor_on.start()
    registry = tmp_path / "fleet.csv"
    env = {**monitor_on.env}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "simulate",
            "--broker",
            mosquitto.url,
            "--districts",
            "2",
            "--meters-per-district",
            "20",
            "--taxis",
            "8",
            "--start",
            "2026-03-01T00:00:00+08:00",
            "--backfill-days",
            "4",
            "--duration-days",
            "4",
            "--registry-out",
            str(registry),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    sent = int(run.stdout.split("published ")[1].split()[0])
    assert f"published {sent} messages, {sent} acknowledged by the broker;" in run.stdout
    assert sent > 2 * 21 * 96 * 4 * 0.9  # readings alone (20 customers + 1 master per district)
    imp = subprocess.run(
        [sys.executable, "-m", "monitor", "registry", "import", str(registry)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert imp.returncode == 0, imp.stderr
    rows = parse_csv(registry.read_text()).rows
    assert f"imported {len(rows)} meter(s)" in imp.stdout
    wait_for(
        lambda: monitor_on.metric("monitor_messages_received_total") >= sent, 60, "all received"
    )
    start = parse_ts("2026-03-01T00:00:00+08:00")
    spec = FleetSpec(start_ms=start, seed=1, districts=2, meters_per_district=(20, 20), taxis=8)
    published = list(Fleet(spec).messages(start, start + 4 * 86_400_000))
    assert sent == len(published)
    distinct = len({(m.topic, m.payload) for m in published})
    wait_for(lambda: stored_rows(tmp_path / "data") == distinct, 30, "every message stored")
    listed = monitor_on.get("/api/meters", limit=1000).json()["items"]
    assert {i["meter_id"] for i in listed} == {r.meter_id for r in rows}
    assert all(i["registered"] and i["messages"] > 0 for i in listed)
    elec = next(r for r in rows if r.kind == "elec" and r.role != "master")
    detail = monitor_on.get(f"/api/meters/{elec.meter_id}").json()
    assert detail["registry"]["district"] == elec.district
    assert detail["latest"]["reading"]["energy_kwh"] > 0
    assert detail["seen"]["first_ts"].startswith("2026-02-28T16:")  # 2026-03-01 00:00 +08:00

    # Evaluated as of its last timestamp, the fleet gets the decisions its truth calls for.
    summary = httpx.post(f"http://{monitor_on.http}/api/evaluate", timeout=120).json()
    assert summary["districts"] == 2 and summary["meters"] == len(rows)
    fleet = Fleet(
        FleetSpec(
            start_ms=parse_ts("2026-03-01T00:00:00+08:00"),
            seed=1,
            districts=2,
            meters_per_district=(20, 20),
            taxis=8,
        )
    )
    truth = fleet.truth()
    decisions = {
        i["meter_id"]: i for i in monitor_on.get("/api/meters", limit=1000).json()["items"]
    }
    disturbed = {t["district"] for t in truth.values() if "stopped" in t.get("faults", [])}
    for meter, t in truth.items():
        d = decisions[meter]
        assert d["decision"] is not None, meter
        if "stopped" in t.get("faults", []):
            assert (d["state"], d["decision"]) == ("faulty", "replace")
        elif t.get("faults") == ["beyond_limit"] and t["district"] not in disturbed:
            assert d["state"] in ("suspect", "watch"), (meter, t["error_pct"], d)
        elif t["kind"] == "elec" and not t.get("faults"):
            assert d["decision"] != "replace", meter
        elif t["kind"] == "taxi" and t.get("faults"):
            expected = {
                "inflated_10pct": {"replace"},
                "inflated_5pct": {"replace"},
                "inflated_2pct": {"resample", "replace"},
                "pulse_injector": {"resample", "replace"},
                "overcharge": {"resample"},
                "seal_break": {"resample"},
                "stale_tariff": {"keep", "extend"},
            }  # no second tariff rolled out here
            assert d["decision"] in expected[t["faults"][0]], (meter, t["faults"], d)
    sample = monitor_on.get(f"/api/meters/{elec.meter_id}").json()["decision"]
    assert sample["rules_version"].startswith("shanghai-default@") and sample["reasons"]


def test_cli_rules_check_and_bad_registry(tmp_path: Path) -> None:
    env = {**os.environ, "MONITOR_CONFIG": str(REPO / "config"), "MONITOR_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "monitor", *args],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
        )

    ok = cli("rules", "check")
    assert ok.returncode == 0 and "valid, version shanghai-default@2026.2+" in ok.stdout
    changed = tmp_path / "rules.yaml"
    rules = (REPO / "config/rules.yaml").read_text()
    changed.write_text(rules.replace("deadline_h: 24", "deadline_h: 12"))
    out = cli("rules", "check", str(changed))
    assert out.returncode == 0 and "taxi.tariff.deadline_h: 24.0 → 12.0" in out.stdout
    changed.write_text(rules.replace("deadline_h: 24", "deadline_h: -1"))
    bad = cli("rules", "check", str(changed))
    assert bad.returncode == 2 and "taxi.tariff.deadline_h" in bad.stderr
    assert "rules.yaml:" in bad.stderr
    csv = tmp_path / "bad.csv"
    csv.write_text("meter_id,kind\nA1,elec\n")
    imp = cli("registry", "import", str(csv))
    assert imp.returncode == 1 and "line 2 (A1)" in imp.stderr and "nothing imported" in imp.stderr


def test_bad_config_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(REPO / "config", cfg)
    (cfg / "monitor.yaml").write_text("mqtt:\n  batch_max: 0\n")
    env = {**os.environ, "MONITOR_CONFIG": str(cfg), "MONITOR_DATA_DIR": str(tmp_path / "d")}
    run = subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 2
    assert f"{cfg / 'monitor.yaml'}:2: mqtt.batch_max" in run.stderr


def test_tariff_rollout_reaches_simulated_taxis(
    monitor_on: MonitorProcess, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    import yaml

    monitor_on.start()
    registry = tmp_path / "taxis.csv"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "simulate",
            "--broker",
            mosquitto.url,
            "--districts",
            "0",
            "--taxis",
            "10",
            "--speed",
            "3600",
            "--start",
            "2026-07-01T00:00:00+08:00",
            "--backfill-days",
            "0",
            "--duration-days",
            "2",
            "--registry-out",
            str(registry),
        ],
        env=monitor_on.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: len(monitor_on.get("/api/meters", kind="taxi").json()["items"]) == 10,
            60,
            "ten simulated taxis reporting",
        )
        tariff = yaml.safe_load((REPO / "config/tariffs.yaml").read_text())["SH-2022"]
        body = {
            **tariff,
            "effective_from": "2026-07-01T00:00:00+08:00",
            "day": {**tariff["day"], "per_km": 2.9},
        }
        r = httpx.post(
            f"http://{monitor_on.http}/api/tariffs/SH-2026/rollout",
            content=json.dumps(body, default=str),
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert r.json()["targeted"] == 10

        def progress() -> dict[str, Any]:  # the API's JSON body, as the endpoint types it
            body: dict[str, Any] = monitor_on.get("/api/tariffs/SH-2026").json()
            return body

        wait_for(lambda: progress()["applied"] == 9, 60, "nine meters applying the tariff")
        stale = [m for m in progress()["meters"] if m["status"] != "applied"]
        assert len(stale) == 1  # the planted meter that never applies new tariffs
        wait_for(
            lambda: progress()["overdue"] == 1, 90, "the stale meter going overdue (event time)"
        )
    finally:
        sim.terminate()
        sim.wait(20)
