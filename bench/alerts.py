"""Alert latency and throughput: finding → Notifier → IngestWorker.publish → Mosquitto → subscriber.

    .venv/bin/python -m bench.alerts                    # 10 000 alerts for the throughput part
    .venv/bin/python -m bench.alerts --alerts 2000      # quick check
    .venv/bin/python -m bench.alerts --trickle-s 60 --burst 3000

Everything runs against a real Mosquitto (`tests.services.Mosquitto`) with the real
parts of the service: `AlertBook` in `state.sqlite` beside `SqliteState`, a `Notifier`
with the routing of `config/monitor.yaml` (receiver `mqtt` for every alert, receiver
`log` for critical ones; the log receiver's lines go to a NullHandler, they are still
produced), and an `IngestWorker` whose `publish` (QoS 1, MQTT 5 session) is what the
notifier publishes with, exactly as `Service.start` wires them. A subscriber in its
own process (so it takes no GIL from the service side) subscribes QoS 1 to
`monitor/alerts/#` and timestamps each message on arrival with CLOCK_MONOTONIC,
the same clock the findings are stamped with in this process.

"Finding" is the moment `AlertBook.observe` returns the change: the conditions come
from `conditions_of` over synthetic meter decisions (a rule mix of major, critical
and minor severities), as in `Evaluator._raise_alerts`, and every change that is not
`repeated` is handed to the notifier one by one (`notifier.submit([change])`, the
service's `notify`).

Latency, each figure from the finding to the subscriber's arrival stamp:

1. direct path, one alert at a time: observe → submit → `tick()` called at once →
   publish → broker → subscriber; the next alert only after the previous arrived.
   Broken down into submit, tick up to the publish call, and publish call → arrival;
2. direct path, a burst: one pass opening `--burst` alerts, then ticks back to back
   until the outbox is empty (a tick delivers at most 200 outbox rows);
3. scheduled path, trickle: the notifier ticked every 2 s by an APScheduler
   BackgroundScheduler configured as in service.py, findings arriving at random
   (Poisson, `--rate` per second) for `--trickle-s` seconds. The scheduled job is a
   thin wrapper around `notifier.tick` that records when each tick ran;
4. scheduled path, a burst of `--burst` alerts in one pass.

Throughput, on a fresh alert book and outbox: `conditions_of` and `observe` for
`--alerts` distinct conditions (pass 1 opens them all, pass 2 repeats them, an empty
pass past `clear_after_h` resolves them, pass 4 reopens them); `submit` of the N
opened changes one by one (the service's way) and in one call (one transaction);
then `tick()` back to back until the outbox is empty, and the time until the
subscriber has all N.

The stores live in an ordinary temporary directory (on disk unless /tmp is tmpfs),
with the service's own pragmas (WAL, synchronous=NORMAL). The machine may be shared:
the timings are what this run saw, not a property of the code. The script prints
figures; it asserts nothing on timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from bench.common import mosquitto_version
from monitor.alerts.book import AlertBook, Change, Condition, conditions_of
from monitor.alerts.notifier import Notifier
from monitor.core.clock import format_ts
from monitor.core.decision import Decision, Reason
from monitor.core.ports import Publisher
from monitor.core.rulebook import RuleBook, Severity, load_rules
from monitor.evaluation.runner import EVALUATION_RULES
from monitor.ingest.worker import IngestWorker
from monitor.platform.config import Settings, load_settings
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import make_client, parse_broker_url
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from tests.services import Mosquitto

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

log = logging.getLogger("bench.alerts")

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
BASE_MS = 1772294400000  # 2026-03-01T00:00:00+08:00: the event time of every pass here
TICK_S = 2.0  # service.py: notifier.tick every 2 s
ALERT_FILTER = "monitor/alerts/#"
# Rules whose findings the synthetic meters carry, in turn (severities from rules.yaml).
# (rule, the severity its finding carries with config/rules.yaml)
RULE_MIX: tuple[tuple[str, Severity], ...] = (
    ("elec.error_limit", "major"),
    ("elec.function_failure.stopped", "critical"),
    ("elec.clock.offset", "minor"),
    ("elec.tamper", "major"),
)
WARMUP = 20  # direct samples run and dropped before the measured ones
ARRIVAL_TIMEOUT_S = 30.0

Key = tuple[int, str]  # (alert id, action): what identifies one published notification


def now() -> float:
    """CLOCK_MONOTONIC, system wide: comparable between this process and the subscriber."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- the subscriber (own process) --------------------------------------------------------


def subscriber_main(
    url: str, out: Queue[tuple[int, str, float] | None], ready: Event, stop: Event
) -> None:
    """Subscribe QoS 1 to the alert topics; report (id, action, arrival) of every message."""
    address = parse_broker_url(url)
    client = make_client(address, f"bench-alerts-sub-{os.getpid()}", "5")

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe(ALERT_FILTER, qos=1)

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if not any(code.is_failure for code in codes):
            ready.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        arrived = now()  # first thing: the stamp is the arrival
        body = json.loads(msg.payload)
        out.put((int(body["id"]), str(body["action"]), arrived))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    out.put(None)


class Arrivals:
    """Arrival stamps from the subscriber process, by (alert id, action); first one wins."""

    def __init__(self, source: Queue[tuple[int, str, float] | None]) -> None:
        self._source = source
        self._times: dict[Key, float] = {}
        self._order: list[Key] = []
        self.duplicates = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="arrivals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._source.get()
            if item is None:
                return
            alert_id, action, arrived = item
            key = (alert_id, action)
            with self._cond:
                if key in self._times:
                    self.duplicates += 1
                else:
                    self._times[key] = arrived
                    self._order.append(key)
                self._cond.notify_all()

    def wait(self, keys: Collection[Key], timeout_s: float = ARRIVAL_TIMEOUT_S) -> dict[Key, float]:
        """Block until every key arrived (or the timeout); the stamps of those that did."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            missing = set(keys) - self._times.keys()
            seen = len(self._order)
            while missing:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%d of %d notifications never arrived", len(missing), len(keys))
                    break
                self._cond.wait(left)
                for key in self._order[seen:]:
                    missing.discard(key)
                seen = len(self._order)
            return {k: self._times[k] for k in keys if k in self._times}

    def reset(self) -> None:
        """Forget what arrived (a fresh alert book numbers its alerts from 1 again)."""
        with self._cond:
            self._times.clear()
            self._order.clear()


@contextmanager
def subscriber(url: str) -> Iterator[Arrivals]:
    ctx = mp.get_context("spawn")
    queue: Queue[tuple[int, str, float] | None] = ctx.Queue()
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(
        target=subscriber_main, args=(url, queue, ready, stop), name="bench-alerts-sub"
    )
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"the subscriber could not subscribe to {ALERT_FILTER} at {url}")
        yield Arrivals(queue)
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


# -- the service side ------------------------------------------------------------------


class PublishProbe:
    """`worker.publish`, noting when the notifier called it (the direct path's breakdown)."""

    def __init__(self, publish: Publisher) -> None:
        self._publish = publish
        self.last = math.nan
        self.calls = 0

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.last = now()
        self.calls += 1
        self._publish(topic, payload, retain)


@dataclass
class Rig:
    """The service's alert path on a real broker: book, notifier, worker."""

    settings: Settings
    book: RuleBook
    alerts: AlertBook
    notifier: Notifier
    worker: IngestWorker
    probe: PublishProbe
    workdir: Path
    closers: list[Callable[[], None]] = field(default_factory=list)

    def notify(self, change: Change) -> None:
        """What Service.start hands the Evaluator: one submit per change."""
        self.notifier.submit([change])

    def notifier_on(self, name: str) -> Notifier:
        """Another notifier with the same routing and publish, on its own outbox file."""
        notifier = Notifier(self.settings.alerts.routing, self.workdir / name, self.probe)
        self.closers.append(notifier.close)
        return notifier

    def book_on(self, name: str) -> AlertBook:
        book = AlertBook(self.workdir / name, self.alerts.clear_after_ms)
        self.closers.append(book.close)
        return book


@contextmanager
def rig(broker: Mosquitto, workdir: Path) -> Iterator[Rig]:
    settings = load_settings(CONFIG_DIR, {})
    mqtt = settings.mqtt.model_copy(update={"url": broker.url, "client_id": "bench-alerts-worker"})
    address = parse_broker_url(broker.url)
    metrics = Metrics()
    store = EmbeddedStore(workdir / "telemetry.sqlite", metrics)
    state = SqliteState(workdir / "state.sqlite")
    worker = IngestWorker(mqtt, address, store, state, metrics)
    worker.start()
    alerts = AlertBook(workdir / "state.sqlite", int(settings.alerts.clear_after_h * 3_600_000))
    probe = PublishProbe(worker.publish)
    notifier = Notifier(settings.alerts.routing, workdir / "notify.sqlite", probe)
    parts = Rig(settings, load_rules(settings.rules_file), alerts, notifier, worker, probe, workdir)
    try:
        if not worker.wait_connected(30):
            raise RuntimeError(f"the worker did not connect to {broker.url}")
        yield parts
    finally:
        for close in reversed(parts.closers):
            close()
        notifier.close()
        worker.stop()
        alerts.close()
        store.close()
        state.close()


def decisions(prefix: str, start: int, n: int, book: RuleBook) -> list[Decision]:
    """N faulty meters, one finding each, rules from RULE_MIX in turn."""
    as_of = format_ts(BASE_MS)
    out = []
    for i in range(start, start + n):
        rule, severity = RULE_MIX[i % len(RULE_MIX)]
        out.append(
            Decision(
                id=f"{prefix}{i:06d}",
                kind="elec",
                decision="replace",
                state="faulty",
                due_on=None,
                as_of=as_of,
                rules_version=book.version,
                reasons=[Reason(rule, 4.2, 3.5, "beyond the limit", severity)],
                evidence={
                    "district": f"TA{i % 20:02d}",
                    "lot": f"WS-{i % 50:03d}",
                    "error_pct": 4.2,
                    "error_ci_pct": [3.9, 4.5],
                    "n_intervals": 2880,
                    "evaluable": True,
                },
            )
        )
    return out


def conditions(prefix: str, start: int, n: int, book: RuleBook) -> list[Condition]:
    return conditions_of(decisions(prefix, start, n, book), BASE_MS)


def routed(changes: list[Change]) -> list[Change]:
    """What `_raise_alerts` hands on: everything but `repeated`."""
    return [c for c in changes if c.action != "repeated"]


def key_of(change: Change) -> Key:
    return (int(change.alert["id"]), change.action)


# -- figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """A latency distribution, in seconds."""

    n: int
    p50: float
    p99: float
    max: float
    mean: float

    @staticmethod
    def of(values: Sequence[float]) -> Dist:
        if not values:
            return Dist(0, math.nan, math.nan, math.nan, math.nan)
        if len(values) == 1:
            v = values[0]
            return Dist(1, v, v, v, v)
        q = statistics.quantiles(values, n=100, method="inclusive")
        return Dist(len(values), q[49], q[98], max(values), statistics.fmean(values))


def _ms(value: float) -> str:
    if value != value:
        return "-"
    return f"{value * 1000:.2f}" if value < 10 else f"{value * 1000:.0f}"


def print_dists(title: str, rows: list[tuple[str, Dist]]) -> None:
    print()
    print(title)
    width = max(len(name) for name, _ in rows)
    print(f"  {'':<{width}}  {'n':>6}  {'p50 ms':>9}  {'p99 ms':>9}  {'max ms':>9}  {'mean ms':>9}")
    for name, d in rows:
        print(
            f"  {name:<{width}}  {d.n:>6}  {_ms(d.p50):>9}  {_ms(d.p99):>9}  "
            f"{_ms(d.max):>9}  {_ms(d.mean):>9}"
        )


def latencies(found: dict[Key, float], arrived: dict[Key, float]) -> list[float]:
    return [arrived[k] - t for k, t in found.items() if k in arrived]


def severity_mix(changes: list[Change]) -> str:
    counts = Counter(str(c.alert["severity"]) for c in changes)
    return ", ".join(f"{n} {s}" for s, n in counts.most_common())


# -- 1, 2: the direct path ----------------------------------------------------------------


def direct_single(r: Rig, arrivals: Arrivals, samples: int) -> None:
    """One alert at a time: observe → submit → tick → arrival, nothing else running."""
    total: list[float] = []
    observe_s: list[float] = []
    submit_s: list[float] = []
    to_publish: list[float] = []
    wire: list[float] = []
    tick_s: list[float] = []
    lost = 0
    for i in range(WARMUP + samples):
        conds = conditions("DS", i, 1, r.book)
        t0 = now()
        changes = routed(r.alerts.observe(conds, BASE_MS, EVALUATION_RULES))
        found = now()  # the finding
        for change in changes:
            r.notify(change)
        submitted = now()
        r.notifier.tick()
        ticked = now()
        published = r.probe.last
        got = arrivals.wait([key_of(c) for c in changes])
        if i < WARMUP:
            continue
        if len(got) < len(changes):
            lost += 1
            continue
        arrived = max(got.values())
        total.append(arrived - found)
        observe_s.append(found - t0)
        submit_s.append(submitted - found)
        to_publish.append(published - submitted)
        wire.append(arrived - published)
        tick_s.append(ticked - submitted)
    print_dists(
        f"(1) direct path, one alert at a time ({samples} alerts after {WARMUP} warm-up; "
        f"tick() called right after submit; next alert after the previous arrived)",
        [
            ("finding → arrival", Dist.of(total)),
            ("  submit([change])", Dist.of(submit_s)),
            ("  tick() up to publish()", Dist.of(to_publish)),
            ("  publish() → arrival", Dist.of(wire)),
            ("whole tick() (incl. settle)", Dist.of(tick_s)),
            ("observe() of the 1-alert pass", Dist.of(observe_s)),
        ],
    )
    if lost:
        print(f"  {lost} alerts never arrived")


def direct_burst(r: Rig, arrivals: Arrivals, burst: int) -> None:
    """One pass opening `burst` alerts; ticks back to back until the outbox is empty."""
    conds = conditions("DB", 0, burst, r.book)
    changes = routed(r.alerts.observe(conds, BASE_MS, EVALUATION_RULES))
    found = now()
    for change in changes:
        r.notify(change)
    submitted = now()
    ticks: list[tuple[float, int]] = []
    while r.notifier.pending():
        t = now()
        delivered = r.notifier.tick()
        ticks.append((now() - t, delivered))
        if delivered == 0:
            log.warning("a tick delivered nothing with %d pending", r.notifier.pending())
            break
    ticked = now()
    keys = {key_of(c): found for c in changes}
    got = arrivals.wait(keys)
    lat = latencies(keys, got)
    print_dists(
        f"(2) direct path, one pass opening {len(changes)} alerts ({severity_mix(changes)}); "
        f"ticks back to back",
        [("finding → arrival", Dist.of(lat))],
    )
    rows = [d for _, d in ticks]
    print(
        f"  submit of {len(changes)} changes one by one: {_ms(submitted - found)} ms; "
        f"{len(ticks)} ticks ({min(rows, default=0)}-{max(rows, default=0)} rows each, "
        f"{_ms(statistics.fmean(t for t, _ in ticks) if ticks else math.nan)} ms mean) "
        f"until the outbox was empty: {_ms(ticked - submitted)} ms; "
        f"last arrival {_ms(max(got.values(), default=math.nan) - found)} ms after the finding"
    )


# -- 3, 4: the scheduled path ------------------------------------------------------------------


class TickLog:
    """`notifier.tick` as the scheduler runs it, noting when each tick ran and delivered."""

    def __init__(self, tick: Callable[[], int]) -> None:
        self._tick = tick
        self.ticks: list[tuple[float, float, int]] = []

    def __call__(self) -> int:
        start = now()
        delivered = self._tick()
        self.ticks.append((start, now(), delivered))
        return delivered


@contextmanager
def scheduled(r: Rig) -> Iterator[TickLog]:
    """The notifier job of Service.start: every 2 s, max_instances=1, coalesce."""
    ticks = TickLog(r.notifier.tick)
    scheduler = BackgroundScheduler(timezone=r.settings.scheduling.timezone)
    scheduler.add_job(
        ticks, "interval", seconds=TICK_S, id="notify", max_instances=1, coalesce=True
    )
    scheduler.start()
    try:
        yield ticks
    finally:
        scheduler.shutdown(wait=True)


def scheduled_trickle(
    r: Rig, arrivals: Arrivals, ticks: TickLog, seconds: float, rate: float, seed: int
) -> None:
    """Findings at random times (one alert per pass), the notifier on its 2 s schedule."""
    rng = random.Random(seed)
    found: dict[Key, float] = {}
    end = now() + seconds
    i = 0
    while True:
        time.sleep(rng.expovariate(rate))
        if now() >= end:
            break
        changes = routed(
            r.alerts.observe(conditions("ST", i, 1, r.book), BASE_MS, EVALUATION_RULES)
        )
        t = now()
        for change in changes:
            found[key_of(change)] = t
            r.notify(change)
        i += 1
    got = arrivals.wait(found, timeout_s=TICK_S * 5)
    lat = latencies(found, got)
    print_dists(
        f"(3) scheduled path, trickle: {len(found)} alerts over {seconds:g} s "
        f"(Poisson, {rate:g}/s), notifier ticking every {TICK_S:g} s",
        [("finding → arrival", Dist.of(lat))],
    )
    durations = [b - a for a, b, _ in ticks.ticks]
    print(
        f"  {len(ticks.ticks)} ticks so far, each {_ms(Dist.of(durations).p50)} ms median; "
        f"expected wait for the next tick alone: uniform over 0-{TICK_S:g} s "
        f"(p50 {TICK_S / 2:g} s, p99 {TICK_S * 0.99:.2f} s)"
    )
    if len(got) < len(found):
        print(f"  {len(found) - len(got)} alerts never arrived")


def scheduled_burst(r: Rig, arrivals: Arrivals, ticks: TickLog, burst: int) -> None:
    """One pass opening `burst` alerts, the notifier on its 2 s schedule."""
    # Start the pass just after a tick, the worst phase for the first alert.
    seen = len(ticks.ticks)
    while len(ticks.ticks) == seen:
        time.sleep(0.005)
    conds = conditions("SB", 0, burst, r.book)
    changes = routed(r.alerts.observe(conds, BASE_MS, EVALUATION_RULES))
    found = now()
    for change in changes:
        r.notify(change)
    submitted = now()
    keys = {key_of(c): found for c in changes}
    got = arrivals.wait(keys, timeout_s=TICK_S * (burst / 100 + 10))
    lat = latencies(keys, got)
    print_dists(
        f"(4) scheduled path, one pass opening {len(changes)} alerts ({severity_mix(changes)}), "
        f"started just after a tick",
        [("finding → arrival", Dist.of(lat))],
    )
    used = [(a, b, n) for a, b, n in ticks.ticks if a >= found and n > 0]
    print(
        f"  submit took {_ms(submitted - found)} ms; {len(used)} ticks delivered the pass "
        f"({', '.join(str(n) for _, _, n in used)} rows); "
        f"last arrival {_ms(max(got.values(), default=math.nan) - found)} ms after the finding"
    )
    if len(got) < len(changes):
        print(f"  {len(changes) - len(got)} alerts never arrived")


# -- 5: throughput -------------------------------------------------------------------------------


def throughput(r: Rig, arrivals: Arrivals, n: int) -> None:
    """observe, submit and tick over N distinct alerts, on a fresh book and outbox."""
    print()
    print(f"(5) throughput, {n:,} distinct alerts, fresh alert book and outbox")
    book = r.book_on("throughput-state.sqlite")
    t = time.perf_counter()
    conds = conditions("TP", 0, n, r.book)
    made = time.perf_counter() - t
    print(f"  {'conditions_of':<34}{made:>9.3f} s  {made / n * 1e6:>8.1f} µs/condition")
    cleared_at = BASE_MS + book.clear_after_ms + 1
    passes: list[tuple[str, list[Condition], int]] = [
        ("observe pass 1 (all opened)", conds, BASE_MS),
        ("observe pass 2 (all repeated)", conds, BASE_MS),
        ("observe empty pass (all resolved)", [], cleared_at),
        ("observe pass 4 (all reopened)", conds, cleared_at),
    ]
    opened: list[Change] = []
    for name, given, at_ms in passes:
        t = time.perf_counter()
        changes = book.observe(given, at_ms, EVALUATION_RULES)
        took = time.perf_counter() - t
        actions = Counter(c.action for c in changes)
        print(
            f"  {name:<34}{took:>9.3f} s  {took / n * 1e6:>8.1f} µs/alert  "
            f"({', '.join(f'{v} {k}' for k, v in actions.items())})"
        )
        if not opened:
            opened = changes
    print(f"  severities: {severity_mix(opened)}")

    batched = r.notifier_on("throughput-batched.sqlite")
    t = time.perf_counter()
    batched.submit(opened)
    took = time.perf_counter() - t
    rows = batched.pending()
    print(
        f"  {'submit(changes), one call':<34}{took:>9.3f} s  {took / n * 1e6:>8.1f} µs/alert  "
        f"({rows} outbox rows; not ticked)"
    )

    notifier = r.notifier_on("throughput-notify.sqlite")
    t = time.perf_counter()
    for change in opened:
        notifier.submit([change])
    took = time.perf_counter() - t
    print(
        f"  {'submit([change]) × N (service)':<34}{took:>9.3f} s  {took / n * 1e6:>8.1f} µs/alert"
    )

    arrivals.reset()
    calls = r.probe.calls
    ticks: list[tuple[float, int]] = []
    start = now()
    while notifier.pending():
        t0 = now()
        delivered = notifier.tick()
        ticks.append((now() - t0, delivered))
        if delivered == 0:
            log.warning("a tick delivered nothing with %d pending", notifier.pending())
            break
    ticked = now() - start
    published = r.probe.calls - calls
    got = arrivals.wait([key_of(c) for c in opened], timeout_s=120)
    drained = max(got.values(), default=math.nan) - start
    per_tick = [d for _, d in ticks]
    print(
        f"  {'tick() × ' + str(len(ticks)) + ' back to back':<34}{ticked:>9.3f} s  "
        f"{ticked / max(len(ticks), 1) * 1000:>8.1f} ms/tick  ({sum(per_tick)} rows, "
        f"{max(per_tick, default=0)} max per tick, {published} MQTT publishes; "
        f"{ticked / max(published, 1) * 1e6:.1f} µs/publish)"
    )
    print(
        f"  {'all N at the subscriber after':<34}{drained:>9.3f} s  "
        f"{len(got) / drained if drained > 0 else math.nan:>8.0f} alerts/s end to end "
        f"({len(got)} of {len(opened)} arrived)"
    )
    rows_per_tick = max(per_tick, default=0)
    if rows_per_tick:
        print(
            f"  on the service's 2 s schedule: at most {rows_per_tick} outbox rows per tick → "
            f"{rows_per_tick / TICK_S:.0f} rows/s; these {sum(per_tick)} rows would need "
            f"{math.ceil(sum(per_tick) / rows_per_tick)} ticks ≈ "
            f"{math.ceil(sum(per_tick) / rows_per_tick) * TICK_S:.0f} s"
        )


# -- main ------------------------------------------------------------------------------------


def versions() -> str:
    return (
        f"python {platform.python_version()}, paho-mqtt {metadata.version('paho-mqtt')}, "
        f"apscheduler {metadata.version('apscheduler')}, sqlite {sqlite3.sqlite_version}, "
        f"{mosquitto_version()}, {os.cpu_count()} CPUs"
    )


def filesystem_of(path: Path) -> str:
    out = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False
    )
    lines = out.stdout.split()
    return lines[-1] if len(lines) > 1 else "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.split("\n")[0])
    p.add_argument("--alerts", type=int, default=10_000, help="N of the throughput part")
    p.add_argument("--samples", type=int, default=1000, help="direct path, one at a time")
    p.add_argument("--burst", type=int, default=1000, help="alerts opened by one pass")
    p.add_argument("--trickle-s", type=float, default=30.0, help="scheduled trickle duration")
    p.add_argument("--rate", type=float, default=4.0, help="scheduled trickle findings per s")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    print(f"bench.alerts: {versions()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    try:
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        try:
            with subscriber(broker.url) as arrivals, rig(broker, workdir / "data") as r:
                routing = r.settings.alerts.routing
                print(
                    f"broker {broker.url}; stores in {workdir} ({filesystem_of(workdir)}); "
                    f"routes: "
                    + "; ".join(f"{rt.name} → {','.join(rt.receivers)}" for rt in routing.routes)
                )
                direct_single(r, arrivals, args.samples)
                direct_burst(r, arrivals, args.burst)
                with scheduled(r) as ticks:
                    scheduled_trickle(r, arrivals, ticks, args.trickle_s, args.rate, args.seed)
                    scheduled_burst(r, arrivals, ticks, args.burst)
                throughput(r, arrivals, args.alerts)
                if arrivals.duplicates:
                    print(f"\nduplicate deliveries seen: {arrivals.duplicates}")
        finally:
            broker.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"total {time.perf_counter() - began:.0f} s")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # The log receiver's lines are produced (their cost is part of a tick) but not shown.
    receiver_log = logging.getLogger("monitor.notify.log")
    receiver_log.addHandler(logging.NullHandler())
    receiver_log.propagate = False
    run(parse_args(argv))


if __name__ == "__main__":
    main()
