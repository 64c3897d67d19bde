"""`monitor simulate` and `monitor demo`: a simulated fleet publishing telemetry."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import paho.mqtt.client as paho

from monitor.core.clock import DAY_MS, HOUR_MS, parse_ts
from monitor.core.registry import parse_rows
from monitor.ingest.worker import IngestWorker
from monitor.platform.config import Settings
from monitor.platform.mqtt import BrokerAddress, make_client, parse_broker_url
from monitor.simulate import Fleet, FleetSpec, run_paced, write_registry_csv
from monitor.taxi.tariff import Tariff

if TYPE_CHECKING:
    from monitor.service import Service

log = logging.getLogger(__name__)
_ACK_WAIT_S = 60.0  # at the end, how long to wait for the broker's last acknowledgements


def fleet_spec(args: argparse.Namespace, start_ms: int) -> FleetSpec:
    """The FleetSpec the command-line options describe."""
    return FleetSpec(
        start_ms=start_ms,
        seed=args.seed,
        districts=args.districts,
        meters_per_district=(args.meters_per_district, args.meters_per_district),
        taxis=args.taxis,
        register_resolution_kwh=args.resolution_kwh,
        missing_rate=args.missing,
        duplicate_rate=args.duplicates,
        disorder_rate=args.disorder,
        topic_root=args.topic_root,
    )


def demo_spec(args: argparse.Namespace, history_end_ms: int) -> FleetSpec:
    """The demo's fleet: `--backfill-days` of history ending at `history_end_ms`.

    The planted stopped meter stops three days before the history ends (not two days
    after it starts): stopped for most of the estimation window, it would leave its
    district too few intervals and the whole district `unknown` on the first pass.

    Meters planted beyond the limit err by 5–7 % here (4–6 % in the simulator's
    default): a meter at 4.3 % has a 95 % interval of about ±0.7 pp on 35 days, the
    master's own class uncertainty included, so it honestly stays `watch` with its
    interval reaching back inside ±3.5 %; the demo shows the `suspect` path on meters
    whose interval clears the limit.
    """
    spec = fleet_spec(args, history_end_ms - int(args.backfill_days * DAY_MS))
    late_s = int((args.backfill_days - 3) * DAY_MS / 1000)
    return dataclasses.replace(
        spec,
        stopped_after_s=max(spec.stopped_after_s, late_s),
        beyond_limit_error_pct=(5.0, 7.0),
    )


def start_ms_of(args: argparse.Namespace) -> int:
    """Simulated start: `--start`, or now minus the backfill (a simulator may use the wall clock)."""
    if args.start:
        return parse_ts(args.start)
    return int(time.time() * 1000) - int(args.backfill_days * DAY_MS)


@dataclass(frozen=True)
class Delivered:
    """What a publisher handed to the broker and what came of it."""

    published: int
    acknowledged: int
    refused: int
    """Messages paho would not take (its error code is logged): never sent."""
    abandoned: int
    """Messages not handed on because the run was stopped while waiting for the broker."""

    @property
    def undelivered(self) -> int:
        """Everything the broker has not acknowledged."""
        return self.published - self.acknowledged + self.refused + self.abandoned

    def describe(self) -> str:
        """One line for a person."""
        text = (
            f"published {self.published} messages, {self.acknowledged} acknowledged by the broker"
        )
        for count, what in (
            (self.published - self.acknowledged, "not acknowledged"),
            (self.refused, "refused by the MQTT client"),
            (self.abandoned, "not sent (stopped)"),
        ):
            if count:
                text += f", {count} {what}"
        return text


class QosPublisher:
    """QoS 1 publishing with at most `window` messages awaiting their PUBACK.

    paho numbers outgoing messages 1..65 535 and refuses (MQTT_ERR_QUEUE_SIZE) a new one
    whose number is still awaiting its acknowledgement, so an unbounded queue silently
    loses messages once a backlog passes 65 535. `publish` therefore blocks while the
    window is full, and every refusal is counted, never dropped quietly.
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        stop: threading.Event,
        window: int = 1000,
    ) -> None:
        if not 0 < window < 65_535:
            raise ValueError(f"window must be in 1..65534, got {window}")
        self._client = make_client(address, client_id, protocol="3.1.1")
        # No paho limits: the window bounds what is in flight. With a limit, paho rescans
        # every outstanding message on every PUBACK (quadratic: ~1 500 msg/s at 1 000).
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._window = window
        self._stop = stop
        self._room = threading.Condition()
        self._published = self._acked = self._refused = self._abandoned = 0
        self._client.connect(address.host, address.port)
        self._client.loop_start()

    def listen_for_tariffs(self, fleet: Fleet) -> None:
        """Deliver `cmd/tariff` messages to the simulated taxi meters (they answer
        with `tariff_applied`, except the planted stale meter)."""
        root = fleet.spec.topic_root

        def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
            meter = msg.topic.split("/")[-3]
            try:
                command = json.loads(msg.payload)
                tariff = Tariff.model_validate(command["tariff"])
                fleet.push_tariff(command["version"], tariff, fleet.cursor_ms, [meter])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("simulated meter %s ignored a bad tariff command: %s", meter, exc)

        self._client.on_message = on_message
        self._client.subscribe(f"{root}/taxi/+/cmd/tariff", qos=1)

    def _on_publish(self, *_: object) -> None:
        with self._room:
            self._acked += 1
            self._room.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish one message at QoS 1, first waiting while `window` await their PUBACK."""
        with self._room:
            while self._published - self._acked >= self._window:
                if self._stop.is_set():
                    self._abandoned += 1
                    return
                self._room.wait(0.5)
            # Counted before it is handed on: its PUBACK may come back before publish()
            # returns. Not under the lock: paho calls on_publish holding its own lock.
            self._published += 1
        info = self._client.publish(topic, payload, qos=1)
        # NO_CONN: paho keeps the message and sends it after reconnecting.
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            with self._room:
                self._published -= 1
                self._refused += 1
            log.error("message to %s not published: %s", topic, paho.error_string(info.rc))

    def delivered(self) -> Delivered:
        """The counts so far."""
        with self._room:
            return Delivered(self._published, self._acked, self._refused, self._abandoned)

    def wait_acknowledged(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until every published message is acknowledged."""
        deadline = time.monotonic() + timeout_s
        with self._room:
            while self._acked < self._published:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._room.wait(min(remaining, 0.5))
        return True

    def close(self, timeout_s: float = 60.0) -> Delivered:
        """Wait for the outstanding PUBACKs (up to the timeout), disconnect, return the counts."""
        self.wait_acknowledged(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        return self.delivered()


def publish_live(
    address: BrokerAddress,
    fleet: Fleet,
    args: argparse.Namespace,
    stop: threading.Event,
    backfill_ms: int,
    not_after: Callable[[], float] | None,
) -> Delivered:
    """Publish the fleet over MQTT from its cursor until stopped or `--duration-days`.

    The first `backfill_ms` goes out as fast as the broker acknowledges; the rest at
    `--speed`, never ahead of `not_after` (the present) when given.
    """
    start_ms = fleet.cursor_ms
    end_ms = fleet.spec.start_ms + int(args.duration_days * DAY_MS) if args.duration_days else None
    publisher = QosPublisher(address, f"monitor-simulator-{args.seed}", stop)
    publisher.listen_for_tariffs(fleet)
    log.info(
        "simulating %d districts × %d meters and %d taxis from %s at %gx",
        args.districts,
        args.meters_per_district,
        args.taxis,
        datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(),
        args.speed,
    )
    try:
        run_paced(
            fleet,
            publisher.publish,
            start_ms,
            args.speed,
            stop,
            end_ms=end_ms,
            backfill_ms=backfill_ms,
            not_after=not_after,
        )
    finally:
        delivered = publisher.close(timeout_s=_ACK_WAIT_S)
    level = logging.WARNING if delivered.undelivered else logging.INFO
    log.log(level, "simulator: %s", delivered.describe())
    return delivered


def withheld_note(fleet: Fleet) -> str:
    """What the simulated meters never sent on purpose (the `--missing` rate)."""
    counts = fleet.delivery_counts
    return (
        f"the simulated meters withheld {counts.withheld} of {counts.produced} messages "
        f"on purpose (--missing), sent {counts.duplicated} twice (--duplicates) "
        f"and {counts.delayed} late (--disorder)"
    )


def run_simulator(args: argparse.Namespace) -> int:
    """`monitor simulate --broker URL`: publish until interrupted or the duration ends.

    Exit code 1 when the broker did not acknowledge every message published.
    """
    stop = threading.Event()
    start_ms = start_ms_of(args)
    fleet = Fleet(fleet_spec(args, start_ms))
    if args.registry_out:
        write_registry_csv(fleet.registry_rows(), args.registry_out)
    # A fleet started from the wall clock stays in the past; an explicit --start is
    # the user's to choose (replaying a fixed period).
    not_after = None if args.start else time.time
    try:
        delivered = publish_live(
            parse_broker_url(args.broker),
            fleet,
            args,
            stop,
            int(args.backfill_days * DAY_MS),
            not_after,
        )
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(f"{delivered.describe()}; {withheld_note(fleet)}")
    return 1 if delivered.undelivered else 0


@dataclass(frozen=True)
class HistoryLoad:
    """A bulk load of history: how much, how long."""

    messages: int
    days: float
    seconds: float


def load_history(
    worker: IngestWorker,
    fleet: Fleet,
    end_ms: int,
    progress: Callable[[int, int, int], None],
    window: int = 20_000,
) -> HistoryLoad:
    """Hand the fleet's messages up to `end_ms` to the worker's own processing, in bulk.

    The same validation, store, dead letters and metrics as messages over MQTT, without
    a broker in between: 35 days of a demo fleet are ~700 000 messages, which an embedded
    Python broker would take many minutes to carry. Returns once all are processed.
    `progress(done, total_ms, at_ms)` is called about every second.
    """
    started = time.monotonic()
    start_ms = fleet.cursor_ms
    base = worker.processed
    submitted, next_report = 0, started

    def wait_below(limit: int) -> None:
        while submitted - (worker.processed - base) > limit:
            time.sleep(0.01)

    for message in fleet.messages(start_ms, end_ms):
        worker.submit(message.topic, message.payload)
        submitted += 1
        if submitted % 1000 == 0:
            wait_below(window)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + 1.0
                progress(submitted, end_ms - start_ms, message.event_ms - start_ms)
    wait_below(0)
    progress(submitted, end_ms - start_ms, end_ms - start_ms)
    return HistoryLoad(submitted, (end_ms - start_ms) / DAY_MS, time.monotonic() - started)


class ProgressLine:
    """One line that updates in place on a terminal, and a line per 10 % elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last_tenth = -1

    def __call__(self, done: int, total_ms: int, at_ms: int) -> None:
        share = at_ms / total_ms if total_ms else 1.0
        text = (
            f"loading history: {share:4.0%} (day {at_ms / DAY_MS:.0f} of "
            f"{total_ms / DAY_MS:.0f}, {done:,} messages)"
        )
        if self._tty:
            self._out.write("\r" + text + ("\n" if share >= 1 else ""))
        elif int(share * 10) > self._last_tenth:
            self._last_tenth = int(share * 10)
            self._out.write(text + "\n")
        self._out.flush()


def first_pass_text(summary: dict[str, Any], alerts_open: int, http: str) -> str:
    """What the first pass found and where to look, for the person who started the demo."""
    states = summary["meter_states"]
    lots = summary["lot_decisions"]
    return (
        f"first evaluation as of {summary['as_of']}: {summary['meters']} meters "
        f"({', '.join(f'{n} {s}' for s, n in states.items())}); "
        f"{summary['lots']} lots ({', '.join(f'{n} {d}' for d, n in lots.items())}); "
        f"{summary['districts_passing_gates']} of {summary['districts']} districts pass "
        f"their data gates; {alerts_open} open alerts.\n"
        f"Look at http://{http}/ (overview), /alerts (the inbox), /meters?state=suspect, "
        f"/meters?state=faulty, /districts and a lot's sampling plan under /lots/LOT "
        f"(README: 'What the demo shows')."
    )


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """`monitor demo`: the service plus a simulated fleet (history in bulk, then live)."""
    from monitor.service import Service

    started = time.monotonic()
    service = Service(settings)
    service.bind_http()
    parts = service.start()
    now_ms = int(time.time() * 1000)
    history_end = now_ms - int(args.catch_up_hours * HOUR_MS)
    if args.start:
        history_end = parse_ts(args.start) + int(args.backfill_days * DAY_MS)
    fleet = Fleet(demo_spec(args, history_end))
    if args.registry_out:
        write_registry_csv(fleet.registry_rows(), args.registry_out)
    parts.state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
    stop = threading.Event()
    demo = threading.Thread(
        target=lambda: _demo_thread(service, fleet, history_end, args, stop, started),
        name="demo",
        daemon=True,
    )
    print(
        f"\nmeter-state monitor demo: broker {parts.address.url}, "
        f"pages http://{settings.api.http}/, API /api/meters, docs /docs; Ctrl-C to stop\n",
        flush=True,
    )
    demo.start()
    try:
        service.serve_http()
    finally:
        stop.set()
        demo.join(timeout=_ACK_WAIT_S + 5)
        service.stop()
    return 0


def _demo_thread(
    service: Service,
    fleet: Fleet,
    history_end: int,
    args: argparse.Namespace,
    stop: threading.Event,
    started: float,
) -> None:
    parts = service.parts
    assert parts is not None
    try:
        loaded = load_history(parts.worker, fleet, history_end, ProgressLine(sys.stdout))
        print(
            f"history loaded: {loaded.messages:,} messages over {loaded.days:g} days "
            f"in {loaded.seconds:.0f} s; {withheld_note(fleet)}",
            flush=True,
        )
        summary = service.evaluate_latest()
        if summary is not None:
            alerts_open = sum(parts.alerts.open_by_severity().values())
            print(first_pass_text(summary, alerts_open, service.settings.api.http), flush=True)
            print(
                f"first pass {time.monotonic() - started:.0f} s after the demo started; "
                f"evaluating again every {args.evaluate_every_min:g} min",
                flush=True,
            )
        service.schedule_evaluation(args.evaluate_every_min * 60)
        publish_live(parts.address, fleet, args, stop, 0, None if args.start else time.time)
    except Exception:  # the service keeps serving what it has
        log.exception("demo simulator stopped")
