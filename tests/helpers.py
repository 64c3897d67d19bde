"""Shared test helpers: a QoS 1 publisher, a collecting subscriber, waiting."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from monitor.core.schema import MEASUREMENTS, Record
from monitor.platform.mqtt import parse_broker_url

BASE_MS = 1772294400000  # 2026-03-01T00:00:00+08:00


def received_live(records: list[Record]) -> float:
    """Receive time (epoch s) of records that arrived as a live feed: at the newest one.

    The state caps the default `as_of` at the receive clock, so fixtures that write
    telemetry straight to the state must say when it was received.
    """
    return max(r.ts_ms for r in records) / 1000 if records else 0.0


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until `check()` is true; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Publisher:
    """A QoS 1 publisher with a persistent session, so a broker restart loses nothing."""

    def __init__(self, url: str, client_id: str = "test-publisher") -> None:
        addr = parse_broker_url(url)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        # paho annotates whole seconds but sleeps any float: a tenth keeps a test's broker
        # restart short.
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        # PUBACKs are tracked by mid: a message published while the broker restarts
        # reports "not connected" yet stays queued and is sent on reconnect.
        self._acked: set[int] = set()
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(addr.host, addr.port)
        self.client.loop_start()
        self.mids: list[int] = []

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._acked.add(mid)

    def send(self, topic: str, payload: bytes | dict[str, Any], retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.mids.append(self.client.publish(topic, body, qos=1, retain=retain).mid)

    def wait_all(self, timeout: float = 60.0) -> None:
        def acked() -> bool:
            with self._lock:
                return all(m in self._acked for m in self.mids)

        wait_for(acked, timeout, "PUBACK of every message")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """Subscribes to a filter and keeps every message."""

    def __init__(self, url: str, topic: str, client_id: str = "test-collector") -> None:
        addr = parse_broker_url(url)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(addr.host, addr.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self._ready.wait(10), "subscription not acknowledged"

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for _, p, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def reading(i: int, meter: str = "M1", district: str = "TA1") -> tuple[str, dict[str, Any]]:
    """The i-th 15-minute reading of a meter."""
    return (
        f"meters/elec/{district}/{meter}/reading",
        {
            "ts": BASE_MS + i * 900_000,
            "energy_kwh": round(100 + 0.25 * i, 3),
            "current_a": 1.1,
            "seq": i,
        },
    )


class Counter:
    """A subscriber keeping the distinct payloads (and every copy) it receives."""

    def __init__(self, url: str, topic: str, client_id: str) -> None:
        addr = parse_broker_url(url)
        self.payloads: set[bytes] = set()
        self.copies: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(addr.host, addr.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert ready.wait(10), "subscription not acknowledged"

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.payloads.add(bytes(msg.payload))
            self.copies.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def count(self) -> int:
        with self._lock:
            return len(self.payloads)

    def has(self, payload: bytes) -> bool:
        with self._lock:
            return payload in self.payloads

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored_rows(data_dir: Path) -> int:
    """Rows in the embedded telemetry store, every measurement (a duplicate overwrites)."""
    db = sqlite3.connect(f"file:{data_dir / 'telemetry.sqlite'}?mode=ro", uri=True)
    try:
        return sum(
            db.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in MEASUREMENTS
        )
    finally:
        db.close()
