"""Ingest throughput: a bare paho subscriber against the full IngestWorker, on a real Mosquitto.

    .venv/bin/python -m bench.ingest                       # bare vs worker (embedded SQLite)
    .venv/bin/python -m bench.ingest --messages 20000      # quick check
    .venv/bin/python -m bench.ingest --influx --workers-pair
    .venv/bin/python -m bench.ingest --workers-pair --state-postgres   # a cluster's workers

The subscriber is measured apart from the publisher. For each contender:

1. its subscriber opens a persistent session (MQTT 5 with session expiry, or
   3.1.1 clean_session=False), subscribes QoS 1 and disconnects;
2. a fast QoS 1 publisher sends all N readings, which Mosquitto queues for the
   offline session (the test broker allows 1 000 000 queued, 1 000 in flight);
3. the subscriber reconnects and the clock runs from that reconnect until N
   messages are counted (bare) or stored and acknowledged (worker). The stored
   rows are then counted against the N distinct (meter, ts) published: the
   loss column.

Afterwards the contender's session is ended, so it queues nothing of the next
contender's messages. The script prints figures; it asserts nothing on timing.

Besides wall time it reads CPU time from /proc: the subscriber process(es)
(client µs/msg), the servers (Mosquitto, and InfluxDB with its v2 adapter for
the InfluxStore rows) and whatever else kept the machine busy meanwhile (other
cores). A worker process is CPU-bound on one core (the GIL), so "cpu vs bare"
is the ratio to trust on a shared, noisy machine; "vs bare" is the wall-clock
ratio the target is stated in.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import pstats
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from bench.common import mosquitto_version
from monitor.core.ports import DayMarks, StateStore, TelemetryStore
from monitor.core.registry import parse_rows
from monitor.ingest.worker import IngestWorker
from monitor.platform.config import InfluxSettings, MqttSettings, StateSettings
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import BrokerAddress, connect_properties, make_client, parse_broker_url
from monitor.store.backends import open_state
from monitor.store.embedded import EmbeddedStore
from monitor.store.marks import PendingMarks
from monitor.store.state import SqliteState
from tests.services import InfluxDB1, InfluxV2Adapter, Mosquitto, PostgreSQL

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

log = logging.getLogger("bench.ingest")

Message = tuple[str, bytes]
Overrides = tuple[tuple[str, str], ...]  # MqttSettings fields set with --set KEY=VALUE

BASE_MS = 1772294400000  # 2026-03-01T00:00:00+08:00
INTERVAL_MS = 900_000  # a reading every 15 minutes
CST = timezone(timedelta(hours=8))
SESSION_EXPIRY_S = 3600
RECEIVE_MAXIMUM = 1000  # MqttSettings default; the test broker caps in-flight at 1000 too
PUBLISH_WINDOW = 5000  # published, not yet acknowledged: well below paho's 65535 mids
STALL_S = 60.0  # give up waiting when nothing moved for this long
POLL_S = 0.005
WORKER_TARGET = 0.60  # worker rate / bare rate
PAIR_TARGET = 1.6  # two worker processes / one
INFLUX_DB, INFLUX_RP, INFLUX_ORG, INFLUX_TOKEN = "meters", "autogen", "bench", "t"


# -- the readings ------------------------------------------------------------------


def fleet(meters: int, districts: int) -> list[tuple[str, str]]:
    """(district, meter) ids: `meters` meters spread evenly over `districts` areas."""
    per = math.ceil(meters / districts)
    ids = [(f"TA{d:02d}", f"EM{d:02d}{m:04d}") for d in range(1, districts + 1) for m in range(per)]
    return ids[:meters]


def readings(n: int, meters: int = 2000, districts: int = 20, seed: int = 7) -> list[Message]:
    """N readings as docs/mqtt.md has them, interval by interval, every (meter, ts) distinct.

    `ts` alternates between RFC 3339 with +08:00 and epoch ms; energy is a
    cumulative register advanced by the interval's power.
    """
    rng = random.Random(seed)
    ids = fleet(meters, districts)
    energy = [rng.uniform(500.0, 20_000.0) for _ in ids]
    out: list[Message] = []
    for k in range(math.ceil(n / len(ids))):
        ts_ms = BASE_MS + k * INTERVAL_MS
        iso = datetime.fromtimestamp(ts_ms / 1000, CST).isoformat()
        for j, (district, meter) in enumerate(ids[: n - len(out)]):
            power_kw = rng.uniform(0.05, 6.0)
            voltage_v = rng.gauss(225.0, 4.0)
            energy[j] += power_kw * INTERVAL_MS / 3_600_000
            body = {
                "ts": iso if (j + k) % 2 else ts_ms,
                "energy_kwh": round(energy[j], 3),
                "voltage_v": round(voltage_v, 1),
                "current_a": round(power_kw * 1000 / voltage_v, 2),
                "power_kw": round(power_kw, 3),
                "seq": k,
            }
            out.append((f"meters/elec/{district}/{meter}/reading", json.dumps(body).encode()))
    return out


def meters_of(messages: list[Message]) -> tuple[tuple[str, str], ...]:
    """The (district, meter) pairs the readings' topics name."""
    return tuple(sorted({(t.split("/")[2], t.split("/")[3]) for t, _ in messages}))


def register_fleet(state: StateStore, meters: tuple[tuple[str, str], ...]) -> None:
    """Put every meter in the registry, in its topic's district.

    So the worker's district check (`district_mismatch`) runs against a full map,
    as in production, instead of finding every meter unregistered.
    """
    rows = [{"meter_id": m, "kind": "elec", "district": d} for d, m in meters]
    state.upsert_meters(parse_rows(rows).rows)


# -- CPU accounting ------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc), 0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (user, nice, system, irq)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[:7])
    return (user + nice + system + irq + softirq) / _TICK


@dataclass(frozen=True)
class Usage:
    """Wall clock and CPU seconds at one instant."""

    wall: float
    client: float
    services: float
    machine: float

    @staticmethod
    def now(clients: list[int], services: list[int]) -> Usage:
        return Usage(
            time.perf_counter(),
            sum(cpu_seconds(p) for p in clients),
            sum(cpu_seconds(p) for p in services),
            machine_busy_seconds(),
        )

    def since(self, start: Usage) -> Usage:
        return Usage(
            self.wall - start.wall,
            self.client - start.client,
            self.services - start.services,
            self.machine - start.machine,
        )


# -- sessions and the publisher ---------------------------------------------------------


def _connect(client: Any, address: BrokerAddress, clean_start: bool, props: Any) -> None:
    """Connect and run the loop; return once the CONNACK arrived."""
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    kwargs: dict[str, Any] = {"keepalive": 30}
    if client.protocol == paho.MQTTv5:
        kwargs |= {"clean_start": clean_start, "properties": props}
    client.connect(address.host, address.port, **kwargs)
    client.loop_start()
    if not connected.wait(15):
        raise RuntimeError(f"no CONNACK from {address.url}")


def _close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


def session_properties(protocol: str) -> Any:
    """CONNECT properties of a persistent session (None on 3.1.1)."""
    return connect_properties(SESSION_EXPIRY_S, RECEIVE_MAXIMUM) if protocol == "5" else None


def prime_session(address: BrokerAddress, client_id: str, subscription: str, protocol: str) -> None:
    """Step 1: a persistent session subscribed QoS 1, left offline."""
    client = make_client(address, client_id, protocol, persistent=True)
    granted: list[Any] = []
    subscribed = threading.Event()

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        granted.extend(codes)
        subscribed.set()

    client.on_subscribe = on_subscribe
    _connect(client, address, True, session_properties(protocol))
    client.subscribe(subscription, qos=1)
    if not subscribed.wait(15) or any(code.is_failure for code in granted):
        raise RuntimeError(f"subscribing {client_id} to {subscription} failed: {granted}")
    _close(client)


def end_session(address: BrokerAddress, client_id: str, protocol: str) -> None:
    """Discard a session (clean start, no expiry) so it queues nothing more."""
    client = make_client(address, client_id, protocol, persistent=False)
    _connect(client, address, True, None)
    _close(client)


def publish_all(address: BrokerAddress, messages: list[Message], timeout_s: float) -> float:
    """Step 2: publish QoS 1 until every PUBACK is in; returns msg/s.

    One thread drives paho's loop itself: with `loop_start()` every publish from
    another thread wakes the network thread through a socket pair, which made
    the publisher 2.5x slower. Unacknowledged messages are kept under
    PUBLISH_WINDOW, because paho keys them by mid (1..65535) and reuses a mid
    without checking: more outstanding than that overwrite each other and are lost.
    """
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-publisher-{os.getpid()}",
        protocol=paho.MQTTv311,
        clean_session=True,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = [0]

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    client.connect(address.host, address.port, keepalive=60)
    deadline = time.monotonic() + timeout_s
    while not client.is_connected() and time.monotonic() < deadline:
        client.loop(0.05)
    start = time.perf_counter()
    publish, loop = client.publish, client.loop
    for sent, (topic, payload) in enumerate(messages, 1):
        while sent - acked[0] > PUBLISH_WINDOW and time.monotonic() < deadline:
            loop(0.01)
        publish(topic, payload, qos=1)
        if sent % 200 == 0:
            loop(0)
    while acked[0] < len(messages) and time.monotonic() < deadline:
        loop(0.01)
    elapsed = time.perf_counter() - start
    client.disconnect()
    if acked[0] < len(messages):
        raise RuntimeError(f"only {acked[0]} of {len(messages)} publishes acknowledged")
    return len(messages) / elapsed


def wait_count(read: Callable[[], int], target: int, stall_s: float = STALL_S) -> int:
    """Poll `read()` until it reaches `target` or stops moving for `stall_s`."""
    last, moved = read(), time.monotonic()
    while last < target:
        time.sleep(POLL_S)
        now = read()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            log.warning("stalled at %d of %d", last, target)
            break
    return last


# -- results -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    contender: str
    messages: int
    usage: Usage
    stored: int  # rows in the store (counted, for the bare subscriber)
    note: str = ""
    rates: list[float] = field(default_factory=list)  # of every round, when repeated

    @property
    def seconds(self) -> float:
        return self.usage.wall

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss(self) -> int:
        return self.messages - self.stored

    @property
    def client_us(self) -> float:
        return self.usage.client / self.messages * 1e6

    @property
    def services_us(self) -> float:
        return self.usage.services / self.messages * 1e6

    @property
    def other_cores(self) -> float:
        u = self.usage
        return max(0.0, u.machine - u.client - u.services) / u.wall if u.wall > 0 else 0.0


def round_ratios(rounds: list[list[Row]]) -> list[str]:
    """Per worker row: its ratio to the bare row of the same round (wall and CPU), and the median.

    On a shared machine the rounds' rates move together; the ratio within a round
    is steadier than the ratio of two medians taken from different rounds.
    """
    out = []
    for i, row in enumerate(rounds[0]):
        if not row.contender.startswith("worker"):
            continue
        wall = [r[i].rate / _bare_for(r, i).rate for r in rounds]
        cpu = [_bare_for(r, i).client_us / r[i].client_us for r in rounds]
        out.append(
            f"  {row.contender}: vs bare per round "
            + ", ".join(f"{x:.2f}" for x in wall)
            + f" (median {statistics.median(wall):.2f}); cpu vs bare "
            + ", ".join(f"{x:.2f}" for x in cpu)
            + f" (median {statistics.median(cpu):.2f})"
        )
    return out


def median_row(rows: list[Row]) -> Row:
    """The round with the median rate, carrying every round's rate and the worst loss."""
    ranked = sorted(rows, key=lambda r: r.rate)
    middle = ranked[(len(ranked) - 1) // 2]
    worst = min(r.stored for r in rows)
    return replace(middle, stored=worst, rates=[r.rate for r in rows]) if len(rows) > 1 else middle


def _verdict(value: float, target: float) -> str:
    return "ok" if value >= target else "BELOW"


def _bare_for(rows: list[Row], i: int) -> Row:
    """The bare subscriber a row is compared with: the nearest bare row above it."""
    return next((r for r in reversed(rows[: i + 1]) if r.contender.startswith("bare")), rows[0])


def _target(row: Row, bare: Row, pair: tuple[Row, Row] | None) -> str:
    if pair is not None and row is pair[1]:
        speedup = pair[1].rate / pair[0].rate
        return f"{speedup:.2f}x one process (target >= {PAIR_TARGET}x): {_verdict(speedup, PAIR_TARGET)}"
    if row.contender.startswith("worker"):
        ratio = row.rate / bare.rate
        return (
            f"{ratio:.1%} of bare (target >= {WORKER_TARGET:.0%}): {_verdict(ratio, WORKER_TARGET)}"
        )
    return ""


def print_table(rows: list[Row], pair: tuple[Row, Row] | None) -> None:
    """The results, one contender a line, targets beside the figures."""
    head = (
        "contender",
        "messages",
        "seconds",
        "msg/s",
        "vs bare",
        "loss",
        "client us/msg",
        "cpu vs bare",
        "servers us/msg",
        "other cores",
        "target",
    )
    lines = [
        (
            row.contender,
            f"{row.messages:,}",
            f"{row.seconds:.2f}",
            f"{row.rate:,.0f}",
            f"{row.rate / bare.rate:.2f}",
            str(row.loss),
            f"{row.client_us:.0f}",
            f"{bare.client_us / row.client_us:.2f}" if row.client_us else "-",
            f"{row.services_us:.0f}",
            f"{row.other_cores:.2f}",
            _target(row, bare, pair),
        )
        for row, bare in ((row, _bare_for(rows, i)) for i, row in enumerate(rows))
    ]
    widths = [max(len(c[i]) for c in (head, *lines)) for i in range(len(head))]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for cells in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    notes = [f"  {row.contender}: {row.note}" for row in rows if row.note]
    notes += [
        f"  {row.contender}: msg/s of each round " + ", ".join(f"{r:,.0f}" for r in row.rates)
        for row in rows
        if len(row.rates) > 1
    ]
    if notes:
        print("notes:")
        print("\n".join(notes))


# -- contenders -------------------------------------------------------------------------


class BareCounter:
    """(a) paho 2.x, QoS 1, auto ack, on_message only counts."""

    def __init__(
        self, address: BrokerAddress, client_id: str, protocol: str, receive_maximum: int
    ) -> None:
        self._address = address
        self._protocol = protocol
        self._receive_maximum = receive_maximum
        self.count = 0
        self._client = make_client(address, client_id, protocol, persistent=True)
        self._client.on_message = self._on_message

    def _on_message(self, _c: Any, _u: Any, _msg: Any) -> None:
        self.count += 1

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self._protocol == "5":
            props = connect_properties(SESSION_EXPIRY_S, self._receive_maximum)
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect_async(self._address.host, self._address.port, 30, **kwargs)
        self._client.loop_start()

    def stop(self) -> None:
        _close(self._client)


class ProfiledWorker(IngestWorker):
    """The worker with cProfile on its processing thread (`--profile`)."""

    profile = cProfile.Profile()

    def _run(self) -> None:
        self.profile.enable()
        try:
            super()._run()
        finally:
            self.profile.disable()


def print_profile(profile: cProfile.Profile, title: str, top: int = 25) -> None:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    print(f"\n== {title}, by own time ==")
    print("\n".join(out.getvalue().splitlines()[: top + 12]))


class BenchMosquitto(Mosquitto):
    """The test broker, with Mosquitto's `max_inflight_messages` set (`--broker-inflight`).

    It bounds QoS 1 messages in flight to an MQTT 3.1.1 client; an MQTT 5 client
    sets its own bound (receive maximum) in CONNECT.
    """

    def __init__(self, workdir: Path, inflight: int) -> None:
        super().__init__(workdir)
        self.inflight = inflight

    def _write_conf(self) -> None:
        super()._write_conf()
        text = self.conf.read_text()
        self.conf.write_text(
            text.replace("max_inflight_messages 1000", f"max_inflight_messages {self.inflight}")
        )


@dataclass(frozen=True)
class InfluxTarget:
    """InfluxDB 1.x (database `meters`) and the v2 adapter the worker writes through."""

    server: InfluxDB1
    url: str  # the adapter
    pids: list[int]  # influxd and the adapter's process

    def database(self, run: int) -> str:
        """A fresh database per run (`meters`, then `meters_2`, ...), so counts are per run."""
        db = INFLUX_DB if run == 1 else f"{INFLUX_DB}_{run}"
        self.server.create_database(db)
        return db

    def count(self, db: str) -> int:
        body = self.server.query("SELECT count(energy_kwh) FROM elec_reading", db)
        series = body["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0


@dataclass
class Bench:
    """What every contender shares: the broker, the readings, a scratch folder."""

    broker: Mosquitto
    messages: list[Message]
    workdir: Path
    protocol: str = "5"
    profile: bool = False
    overrides: Overrides = ()
    state_url: str | None = None  # --state-postgres: the worker processes' shared state
    _runs: int = 0
    _influx_runs: int = 0

    def _fresh(self, name: str) -> Path:
        """An empty data folder for one contender run (rounds must not share stores)."""
        self._runs += 1
        return self.workdir / f"{name}-{self._runs}"

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker.url)

    @property
    def n(self) -> int:
        return len(self.messages)

    @property
    def broker_pids(self) -> list[int]:
        proc = self.broker._proc.proc  # tests.services keeps the Popen private
        return [proc.pid] if proc is not None else []

    def queue_for(self, sessions: list[tuple[str, str]]) -> None:
        """Steps 1 and 2: prime the (client id, filter) sessions, then publish everything."""
        for client_id, subscription in sessions:
            prime_session(self.address, client_id, subscription, self.protocol)
        rate = publish_all(self.address, self.messages, timeout_s=max(120.0, self.n / 1000))
        log.info("published %d to %d offline session(s) at %.0f msg/s", self.n, len(sessions), rate)

    def _clock(self, services: list[int] | None = None) -> Callable[[], Usage]:
        pids = self.broker_pids + (services or [])
        return lambda: Usage.now([os.getpid()], pids)

    def bare(self) -> Row:
        client_id = "bench-bare"
        self.queue_for([(client_id, "meters/#")])
        window = self._settings(client_id, None).receive_maximum  # the workers' window
        counter = BareCounter(self.address, client_id, self.protocol, window)
        clock = self._clock()
        start = clock()
        counter.start()
        wait_count(lambda: counter.count, self.n)
        usage = clock().since(start)
        time.sleep(0.2)  # anything beyond N would be a duplicate
        counter.stop()
        end_session(self.address, client_id, self.protocol)
        note = f"{counter.count - self.n} duplicates" if counter.count > self.n else ""
        label = f"bare paho, count only (MQTT {self.protocol})"
        return Row(label, self.n, usage, min(counter.count, self.n), note)

    def embedded_worker(self) -> Row:
        settings = self._settings("bench-worker-embedded", None)
        self.queue_for([(settings.session_id, settings.subscription)])
        data = self._fresh("worker-embedded")
        state = self._state(data)
        # As the service opens it: each batch's (district, day)s marked in the state.
        store = EmbeddedStore(data / "telemetry.sqlite", Metrics(), marks=state)
        worker = self._worker(settings, store, state)
        clock = self._clock()
        start = clock()
        worker.start()
        wait_count(lambda: worker.processed, self.n)
        usage = clock().since(start)
        processed = self._finish(worker, store, state)
        if isinstance(worker, ProfiledWorker):
            print_profile(worker.profile, "worker processing thread (cProfile)")
        stored = count_rows(data / "telemetry.sqlite")
        label = f"worker + embedded SQLite (MQTT {self.protocol})"
        return Row(label, self.n, usage, stored, _extra(processed, self.n))

    def influx_worker(self, influx: InfluxTarget) -> list[Row]:
        """(c) time until spooled and acknowledged, and until flushed to InfluxDB."""
        from monitor.store.influx import InfluxStore

        settings = self._settings("bench-worker-influx", None)
        self.queue_for([(settings.session_id, settings.subscription)])
        data = self._fresh("worker-influx")
        self._influx_runs += 1
        db = influx.database(self._influx_runs)
        target = InfluxSettings(
            url=influx.url, token=INFLUX_TOKEN, org=INFLUX_ORG, bucket=f"{db}/{INFLUX_RP}"
        )
        state = self._state(data)
        store = InfluxStore(target, data / "spool", Metrics(), state)
        worker = self._worker(settings, store, state)
        clock = self._clock(influx.pids)
        start = clock()
        worker.start()
        wait_count(lambda: worker.processed, self.n)
        acked = clock().since(start)
        wait_count(lambda: self.n - store.health().buffered_points, self.n)
        flushed = clock().since(start)
        processed = self._finish(worker, store, state)
        stored = influx.count(db)
        return [
            Row(
                "worker + InfluxStore, spooled+acked",
                self.n,
                acked,
                stored,
                _extra(processed, self.n),
            ),
            Row("worker + InfluxStore, flushed to InfluxDB", self.n, flushed, stored),
        ]

    def _settings(self, client_id: str, group: str | None) -> MqttSettings:
        return mqtt_settings(self.broker.url, client_id, group, self.protocol, self.overrides)

    def _state(self, data: Path) -> SqliteState:
        state = SqliteState(data / "state.sqlite")
        register_fleet(state, meters_of(self.messages))
        return state

    def _worker(
        self, settings: MqttSettings, store: TelemetryStore, state: SqliteState
    ) -> IngestWorker:
        cls = ProfiledWorker if self.profile else IngestWorker
        return cls(settings, self.address, store, state, Metrics())

    def _finish(self, worker: IngestWorker, store: TelemetryStore, state: SqliteState) -> int:
        worker.stop()
        store.close()
        state.close()
        end_session(self.address, worker._s.session_id, self.protocol)
        return worker.processed

    def processes(self, workers: int, group: str) -> Row:
        """(d) `workers` worker processes on one shared subscription, embedded stores."""
        specs = [
            ChildSpec(
                i,
                self.broker.url,
                f"bench-{group}-{i}",
                group,
                self.protocol,
                str(self._fresh(f"{group}-{i}")),
                self.overrides,
                meters_of(self.messages),
                self.state_url,
            )
            for i in range(workers)
        ]
        subscription = f"$share/{group}/meters/#"
        self.queue_for([(s.client_id, subscription) for s in specs])
        usage, done = run_children(specs, self.n, self.broker_pids)
        for spec in specs:
            end_session(self.address, spec.client_id, self.protocol)
        processed = [d.processed for d in done]
        stored = sum(d.stored for d in done)
        label = "1 worker process" if workers == 1 else f"{workers} worker processes ($share)"
        if self.state_url:
            label += ", PostgreSQL state"
        note = "processed per process " + " + ".join(f"{p:,}" for p in processed)
        note += f" = {sum(processed):,}" + (
            "" if sum(processed) == self.n else f" (N = {self.n:,})"
        )
        return Row(label, self.n, usage, stored, note)


def mqtt_settings(
    url: str, client_id: str, group: str | None, protocol: str, overrides: Overrides = ()
) -> MqttSettings:
    """The workers' MQTT settings: defaults, the bench's identity, then `--set` overrides."""
    return MqttSettings.model_validate(
        {
            **dict(overrides),
            "url": url,
            "client_id": client_id,
            "shared_group": group,
            "protocol": protocol,
        }
    )


def parse_overrides(items: list[str]) -> Overrides:
    """`["receive_maximum=4000"]` → `(("receive_maximum", "4000"),)`, validated."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in MqttSettings.model_fields:
            raise SystemExit(f"--set takes an MqttSettings field as KEY=VALUE, not {item!r}")
        pairs.append((key, value))
    try:
        mqtt_settings("mqtt://127.0.0.1:1883", "check", None, "5", tuple(pairs))
    except ValidationError as exc:
        raise SystemExit(f"--set: {exc}") from None
    return tuple(pairs)


def _extra(processed: int, n: int) -> str:
    return f"{processed - n} redelivered (processed {processed:,})" if processed != n else ""


def count_rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM elec_reading").fetchone()[0])
    finally:
        db.close()


# -- worker processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    """What a worker process needs (picklable for spawn)."""

    index: int
    broker_url: str
    client_id: str
    group: str
    protocol: str
    data_dir: str
    overrides: Overrides = ()
    meters: tuple[tuple[str, str], ...] = ()  # (district, meter) put in the registry
    state_url: str | None = None  # the shared PostgreSQL state, else SQLite per process


@dataclass(frozen=True)
class ChildDone:
    index: int
    processed: int
    stored: int


def child_main(
    spec: ChildSpec, go: Event, stop: Event, progress: Any, results: Queue[ChildDone | int]
) -> None:
    """One worker process: build, report ready, run on `go`, publish progress, stop."""
    logging.basicConfig(level=logging.WARNING)
    data = Path(spec.data_dir)
    backend = open_state(StateSettings(url=spec.state_url), data, spec.client_id)
    # As the service marks: the shared state through a local waiting file, else its own.
    marks: DayMarks = (
        PendingMarks(backend.ingest, data / "pending-marks.json", Metrics())
        if backend.shared
        else backend.state
    )
    store = EmbeddedStore(data / "telemetry.sqlite", Metrics(), marks=marks)
    register_fleet(backend.state, spec.meters)
    settings = mqtt_settings(
        spec.broker_url, spec.client_id, spec.group, spec.protocol, spec.overrides
    )
    address = parse_broker_url(spec.broker_url)
    worker = IngestWorker(settings, address, store, backend.ingest, Metrics())
    results.put(spec.index)
    go.wait()
    worker.start()
    while not stop.wait(POLL_S):
        progress[spec.index] = worker.processed
    worker.stop()
    progress[spec.index] = worker.processed
    store.close()
    backend.close()
    results.put(ChildDone(spec.index, worker.processed, count_rows(data / "telemetry.sqlite")))


def run_children(
    specs: list[ChildSpec], n: int, service_pids: list[int]
) -> tuple[Usage, list[ChildDone]]:
    """Start the processes, time from `go` until their progress sums to N."""
    ctx = mp.get_context("spawn")
    go, stop = ctx.Event(), ctx.Event()
    progress = ctx.Array("q", len(specs), lock=False)
    results: Queue[ChildDone | int] = ctx.Queue()
    procs = [
        ctx.Process(target=child_main, args=(s, go, stop, progress, results), name=s.client_id)
        for s in specs
    ]
    for p in procs:
        p.start()
    for _ in specs:
        results.get(timeout=120)  # ready
    pids = [p.pid for p in procs if p.pid is not None]
    start = Usage.now(pids, service_pids)
    go.set()
    wait_count(lambda: sum(progress), n)
    usage = Usage.now(pids, service_pids).since(start)
    stop.set()
    done = [results.get(timeout=120) for _ in specs]
    for p in procs:
        p.join(timeout=30)
    finished = sorted((d for d in done if isinstance(d, ChildDone)), key=lambda d: d.index)
    return usage, finished


# -- services ----------------------------------------------------------------------------------


def adapter_main(upstream: str, ports: Queue[int], stop: Event) -> None:
    """The v2 adapter in its own process, so its HTTP threads do not take the worker's GIL."""
    adapter = InfluxV2Adapter(upstream)
    adapter.start()
    ports.put(adapter.port)
    stop.wait()
    adapter.stop()


@contextmanager
def influx_target(workdir: Path) -> Iterator[InfluxTarget]:
    """InfluxDB 1.x with database `meters` behind the v2 adapter (bucket meters/autogen)."""
    server = InfluxDB1(workdir / "influxdb")
    server.start()
    ctx = mp.get_context("spawn")
    ports: Queue[int] = ctx.Queue()
    stop = ctx.Event()
    adapter = ctx.Process(target=adapter_main, args=(server.url, ports, stop), name="adapter")
    try:
        adapter.start()
        port = ports.get(timeout=60)
        influxd = server._proc.proc  # tests.services keeps the Popen private
        pids = [p for p in (adapter.pid, influxd.pid if influxd else None) if p is not None]
        yield InfluxTarget(server, f"http://127.0.0.1:{port}", pids)
    finally:
        stop.set()
        adapter.join(timeout=10)
        server.stop()


def versions() -> str:
    return (
        f"python {platform.python_version()}, paho-mqtt {metadata.version('paho-mqtt')}, "
        f"pydantic {metadata.version('pydantic')}, {mosquitto_version()}, "
        f"{os.cpu_count()} CPUs"
    )


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=200_000, help="readings per contender")
    p.add_argument("--influx", action="store_true", help="also the worker with InfluxStore")
    p.add_argument(
        "--workers-pair", action="store_true", help="also one worker process vs two ($share)"
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat every contender, report the median"
    )
    p.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        action="append",
        help="MQTT version of bare and worker (default 5); twice: both, in every round",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an MqttSettings field of the workers, e.g. receive_maximum=4000",
    )
    p.add_argument(
        "--profile", action="store_true", help="cProfile the embedded worker's processing thread"
    )
    p.add_argument(
        "--broker-inflight",
        type=int,
        default=1000,
        metavar="N",
        help="Mosquitto max_inflight_messages (its own default is 20)",
    )
    p.add_argument(
        "--state-postgres",
        action="store_true",
        help="the worker processes share a PostgreSQL state (started here), as a cluster",
    )
    p.add_argument("--meters", type=int, default=2000)
    p.add_argument("--districts", type=int, default=20)
    return p.parse_args(argv)


def contenders(bench: Bench, args: argparse.Namespace, workdir: Path) -> list[list[Row]]:
    """Run every contender `--rounds` times, interleaved; the rows of each round."""
    rounds: list[list[Row]] = []
    with influx_target(workdir) if args.influx else _nothing() as influx:
        for i in range(args.rounds):
            if args.rounds > 1:
                log.info("round %d of %d", i + 1, args.rounds)
            rows = []
            for protocol in args.protocol:
                bench.protocol = protocol
                rows += [bench.bare(), bench.embedded_worker()]
            bench.protocol = args.protocol[0]
            if influx is not None:
                rows += bench.influx_worker(influx)
            if args.workers_pair:
                rows += [bench.processes(1, "bench-solo"), bench.processes(2, "bench")]
            rounds.append(rows)
    return rounds


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


@contextmanager
def postgres_state(wanted: bool) -> Iterator[str | None]:
    """A PostgreSQL for the worker processes' shared state (tests.services), or None."""
    if not wanted:
        yield None
        return
    server = PostgreSQL()
    try:
        server.start()
        yield server.create_database("bench")
    finally:
        server.cleanup()


def run(args: argparse.Namespace) -> None:
    overrides = parse_overrides(args.set)
    args.protocol = args.protocol or ["5"]
    print(f"bench.ingest: {args.messages:,} readings per contender; {versions()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Mosquitto max_inflight_messages {args.broker_inflight}")
    t = time.perf_counter()
    messages = readings(args.messages, args.meters, args.districts)
    size = sum(len(p) for _, p in messages) / len(messages)
    print(
        f"generated {len(messages):,} readings from {args.meters} meters in {args.districts} "
        f"districts ({size:.0f} B payload avg) in {time.perf_counter() - t:.1f}s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        broker = BenchMosquitto(workdir / "mosquitto", args.broker_inflight)
        broker.start()
        try:
            bench = Bench(broker, messages, workdir, args.protocol[0], args.profile, overrides)
            with postgres_state(args.state_postgres) as bench.state_url:
                rounds = contenders(bench, args, workdir)
        finally:
            broker.stop()
    rows = [median_row(list(same)) for same in zip(*rounds, strict=True)]
    pair = (rows[-2], rows[-1]) if args.workers_pair else None
    print()
    print_table(rows, pair)
    if len(rounds) > 1:
        print("\n".join(["ratios within each round:", *round_ratios(rounds)]))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("monitor").setLevel(logging.WARNING)
    run(parse_args(argv))


if __name__ == "__main__":
    main()
