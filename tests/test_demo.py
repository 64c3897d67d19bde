"""The demo and the simulator as a newcomer meets them: counted end to end, real brokers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.cli import build_parser
from monitor.core.clock import parse_ts
from monitor.demo import QosPublisher, demo_spec
from monitor.platform.mqtt import parse_broker_url
from monitor.simulate import Fleet
from tests.helpers import Counter, stored_rows, wait_for
from tests.services import Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000


# --- the simulator's publisher ------------------------------------------------------


@pytest.mark.mosquitto
def test_publisher_crosses_the_message_id_wrap_without_loss(mosquitto: Mosquitto) -> None:
    """More messages than MQTT has packet ids, published while the broker cannot answer:
    paho would refuse each new message whose id is still awaiting its PUBACK."""
    n = 70_000  # > 65 535
    counter = Counter(mosquitto.url, "wrap/#", "wrap-counter")
    stop = threading.Event()
    publisher = QosPublisher(parse_broker_url(mosquitto.url), "wrap-publisher", stop)
    wait_for(lambda: publisher._client.is_connected(), 10, "the publisher connected")
    mosquitto.pause()
    try:

        def send_all() -> None:
            for i in range(n):
                publisher.publish("wrap/t", b"%d" % i)

        sender = threading.Thread(target=send_all)
        sender.start()
        # The window fills up (or, unbounded, everything is queued) while nothing is acked.
        wait_for(
            lambda: publisher.delivered().published >= 1000 or not sender.is_alive(),
            30,
            "the publisher to fill its window",
        )
    finally:
        mosquitto.resume()
    sender.join(120)
    delivered = publisher.close(timeout_s=120)
    wait_for(lambda: counter.count() >= delivered.published, 120, "every message received")
    counter.close()
    assert (delivered.published, delivered.acknowledged, delivered.refused) == (n, n, 0)
    assert delivered.undelivered == 0
    assert counter.count() == n


# --- the demo -------------------------------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`monitor demo` on a smaller fleet with two weeks of history, run as a user runs it."""
    start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - 20 * 86_400))
    fleet_args = [
        "--districts", "2",
        "--meters-per-district", "20",
        "--taxis", "8",
        "--start", start,
        "--backfill-days", "14",  # ~90 000 messages
        "--duration-days", "14",  # the history only: no live phase to wait for
        "--evaluate-every-min", "60",
    ]  # fmt: skip
    http = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "MONITOR_CONFIG": str(REPO / "config"),
        "MONITOR_DATA_DIR": str(tmp_path / "data"),
        "MONITOR_HTTP": http,
        "MONITOR_EMBEDDED_MQTT": f"127.0.0.1:{free_port()}",
    }
    env.pop("MONITOR_MQTT_URL", None)
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "demo", *fleet_args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        yield {
            "proc": proc,
            "out": out,
            "http": http,
            "args": fleet_args,
            "data": tmp_path / "data",
        }
    finally:
        proc.terminate()
        proc.wait(30)


def test_demo_loads_its_history_whole_and_shows_findings_on_the_first_pass(
    demo: dict[str, Any],
) -> None:
    out: Path = demo["out"]

    def printed(text: str) -> bool:
        assert demo["proc"].poll() is None, out.read_text()[-3000:]
        return text in out.read_text()

    wait_for(lambda: printed("first evaluation as of"), 240, "the first pass")
    text = out.read_text()
    assert "loading history: 100% (day 14 of 14" in text
    loaded = int(text.split("history loaded: ")[1].split()[0].replace(",", ""))

    # Count published = count stored, for the same fleet regenerated here.
    args = build_parser().parse_args(["demo", *demo["args"]])
    spec = demo_spec(args, parse_ts(args.start) + 14 * DAY_MS)
    messages = list(Fleet(spec).messages(spec.start_ms, spec.start_ms + 14 * DAY_MS))
    assert loaded == len(messages)
    assert stored_rows(demo["data"]) == len({(m.topic, m.payload) for m in messages})

    # The first pass shows what the demo is for (README: "What the demo shows").
    api = f"http://{demo['http']}/api"

    def get(path: str, **params: Any) -> Any:
        r = httpx.get(f"{api}{path}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    meters = {m["meter_id"]: m for m in get("/meters", limit=1000)["items"]}
    truth = Fleet(spec).truth()

    def planted(fault: str) -> str:
        return next(k for k, t in truth.items() if fault in t.get("faults", []))

    assert meters[planted("stopped")]["state"] == "faulty"
    # Meters planted beyond the limit: never called normal; those whose interval clears the
    # limit are suspect (the ones just past it may stay watch while their interval reaches
    # back inside it), and the demo shows at least one.
    beyond = [k for k, t in truth.items() if "beyond_limit" in t.get("faults", [])]
    states = [meters[k]["state"] for k in beyond]
    assert "normal" not in states and "suspect" in states, [
        (k, truth[k]["error_pct"], get(f"/meters/{k}")["decision"]["evidence"]) for k in beyond
    ]
    assert meters[planted("overcharge")]["state"] == "suspect"
    assert meters[planted("inflated_10pct")]["decision"] == "replace"
    assert all(d["gates_passed"] for d in get("/districts")["items"])
    customer = next(k for k, t in truth.items() if t["kind"] == "elec" and not t.get("faults"))
    assert get(f"/meters/{customer}")["decision"]["evidence"]["evaluable"] is True
    lots = [
        get(f"/lots/{lot}") for lot in {m["lot"] for m in meters.values() if m["kind"] == "elec"}
    ]
    plans = [lot["plan"] for lot in lots if lot["decision"] == "resample"]
    assert plans and all(p["sample_size"] > 0 for p in plans)
    assert get("/alerts", status="open")["items"]
