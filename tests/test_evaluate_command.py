"""`monitor evaluate` is the service's pass: it publishes decisions, raises and notifies
alerts, with the service running (it asks it) and without (it does it all itself)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from monitor.alerts.book import AlertBook
from monitor.cli import main
from monitor.core.registry import parse_rows
from monitor.core.schema import ELEC_EVENT, ELEC_READING, Record
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.service import Service
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS, Collector, Publisher, reading, received_live, wait_for
from tests.services import Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
STEP = 900_000
METERS = [{"meter_id": "M1", "kind": "elec", "district": "TA1"}]


def environment(broker: Mosquitto, data: Path, http: str) -> dict[str, str]:
    return {
        "MONITOR_CONFIG": str(REPO / "config"),
        "MONITOR_MQTT_URL": broker.url,
        "MONITOR_DATA_DIR": str(data),
        "MONITOR_HTTP": http,
        "MONITOR_SCHEDULING__EVALUATE_CRON": "",
    }


def open_alerts(data: Path) -> list[dict[str, object]]:
    book = AlertBook(data / "state.sqlite", 1)
    try:
        return book.list("open", None, None, 0, 100)
    finally:
        book.close()


def decisions_and_alerts(broker: Mosquitto) -> tuple[Collector, Collector]:
    return (
        Collector(broker.url, "monitor/decisions/#", client_id="eval-decisions"),
        Collector(broker.url, "monitor/alerts/#", client_id="eval-alerts"),
    )


@pytest.fixture
def service(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[Service, dict[str, str]]]:
    env = environment(mosquitto, tmp_path / "data", f"127.0.0.1:{free_port()}")
    svc = Service(load_settings(REPO / "config", env))
    parts = svc.start()
    parts.state.upsert_meters(parse_rows(METERS).rows)
    svc.serve_http_in_thread()
    base = f"http://{env['MONITOR_HTTP']}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, "the service's API")
    yield svc, env
    svc.stop()


def test_with_the_service_up_the_command_runs_the_services_pass(
    service: tuple[Service, dict[str, str]],
    mosquitto: Mosquitto,
    capsys: pytest.CaptureFixture[str],
) -> None:
    svc, env = service
    parts = svc.parts
    assert parts is not None
    pub = Publisher(mosquitto.url, client_id="eval-pub")
    for i in range(8):
        pub.send(*reading(i, meter="M1", district="TA1"))
    pub.send("meters/elec/TA1/M1/event", {"ts": BASE_MS + 3 * STEP, "code": "cover_open"})
    pub.wait_all()
    wait_for(lambda: parts.worker.processed >= 9, 30, "telemetry ingested")
    decisions, alerts = decisions_and_alerts(mosquitto)

    assert main(["evaluate"], env) == 0
    printed = capsys.readouterr().out
    assert "evaluated by the running service" in printed
    assert any(line.startswith("M1 ") and "resample" in line for line in printed.splitlines())
    wait_for(lambda: decisions.messages != [], 15, "M1's decision published")
    assert decisions.messages[0][0] == "monitor/decisions/elec/M1"
    assert json.loads(decisions.messages[0][1])["decision"] == "resample"
    [tamper] = [a for a in parts.alerts.list("open", None, None, 0, 10) if a["meter"] == "M1"]
    assert tamper["rule"] == "elec.tamper"
    wait_for(lambda: alerts.messages != [], 15, "the alert notified")
    assert json.loads(alerts.messages[0][1])["rule"] == "elec.tamper"
    # the same refusals as the API's
    assert main(["evaluate", "--as-of", "2099-06-01T00:00:00Z"], env) == 1
    assert "after the receive clock" in capsys.readouterr().err
    pub.close()
    decisions.close()
    alerts.close()


def test_with_no_service_the_command_does_everything_the_pass_does(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    env = environment(mosquitto, data, f"127.0.0.1:{free_port()}")  # nothing listens there
    state = SqliteState(data / "state.sqlite")
    store = EmbeddedStore(data / "telemetry.sqlite", Metrics())
    state.upsert_meters(parse_rows(METERS).rows)
    records = [
        Record(ELEC_READING, "M1", "TA1", BASE_MS + i * STEP, {"energy_kwh": 100 + i / 4})
        for i in range(8)
    ]
    records.append(Record(ELEC_EVENT, "M1", "TA1", BASE_MS + 3 * STEP, {"code": "cover_open"}))
    store.write(records)
    state.note_seen(summarise_seen(records, received_live(records)))
    store.close()
    state.close()
    decisions, alerts = decisions_and_alerts(mosquitto)

    assert main(["evaluate"], env) == 0
    printed = capsys.readouterr().out
    assert "this process ran the pass itself" in printed
    assert f"decisions published to {mosquitto.url}" in printed
    wait_for(lambda: decisions.messages != [], 15, "M1's decision published")
    assert decisions.messages[0][0] == "monitor/decisions/elec/M1"
    assert [a["rule"] for a in open_alerts(data)] == ["elec.tamper"]
    wait_for(lambda: alerts.messages != [], 15, "the alert notified")
    assert json.loads(alerts.messages[0][1])["rule"] == "elec.tamper"
    assert "1 opened" in printed and "0 left in the outbox" in printed
    # in the future: refused unless forced
    assert main(["evaluate", "--as-of", "2099-06-01T00:00:00Z"], env) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["evaluate", "--as-of", "2099-06-01T00:00:00Z", "--force"], env) == 0
    decisions.close()
    alerts.close()


def test_with_no_broker_the_alerts_wait_in_the_outbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    env = {
        "MONITOR_CONFIG": str(REPO / "config"),
        "MONITOR_DATA_DIR": str(data),
        "MONITOR_HTTP": f"127.0.0.1:{free_port()}",
        "MONITOR_EMBEDDED_MQTT": f"127.0.0.1:{free_port()}",  # the service (and broker) down
    }
    state = SqliteState(data / "state.sqlite")
    store = EmbeddedStore(data / "telemetry.sqlite", Metrics())
    state.upsert_meters(parse_rows(METERS).rows)
    records = [Record(ELEC_EVENT, "M1", "TA1", BASE_MS, {"code": "cover_open"})]
    records.append(Record(ELEC_READING, "M1", "TA1", BASE_MS, {"energy_kwh": 100.0}))
    store.write(records)
    state.note_seen(summarise_seen(records, received_live(records)))
    store.close()
    state.close()
    assert main(["evaluate"], env) == 0
    printed = capsys.readouterr().out
    assert "decisions not published: no broker" in printed
    assert "1 left in the outbox" in printed
    assert [a["rule"] for a in open_alerts(data)] == ["elec.tamper"]
