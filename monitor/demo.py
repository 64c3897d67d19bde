"""`monitor simulate` and `monitor demo`: a simulated fleet publishing telemetry."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as paho

from monitor.core.registry import parse_rows
from monitor.ingest.telemetry import parse_ts
from monitor.platform.config import Settings
from monitor.platform.mqtt import BrokerAddress, make_client, parse_broker_url
from monitor.simulate import Fleet, FleetSpec, run_paced, write_registry_csv
from monitor.taxi.tariff import Tariff

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


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


def start_ms_of(args: argparse.Namespace) -> int:
    """Simulated start: `--start`, or now minus the backfill (a simulator may use the wall clock)."""
    if args.start:
        return parse_ts(args.start)
    return int(time.time() * 1000) - int(args.backfill_days * DAY_MS)


def simulated_clock(
    live_from_ms: int, speed: float, wall: Callable[[], float] = time.time
) -> Callable[[], float]:
    """The demo world's clock (epoch s): `live_from_ms` now, running `speed` times as fast.

    The demo's service receives on this clock, so the simulated fleet running 60x
    ahead of the wall clock is not refused as future-dated (`ingest.max_future_s`).
    Started before the simulator, it is never behind the simulator's own clock.
    """
    origin = wall()
    return lambda: live_from_ms / 1000 + (wall() - origin) * speed


class QosPublisher:
    """QoS 1 publishing that can wait until the broker has acknowledged everything."""

    def __init__(self, address: BrokerAddress, client_id: str) -> None:
        self._client = make_client(address, client_id, protocol="3.1.1")
        self._client.max_inflight_messages_set(500)
        self._client.max_queued_messages_set(0)  # queue without limit while the broker catches up
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
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
        with self._lock:
            self.acked += 1

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one message at QoS 1."""
        with self._lock:
            self.sent += 1
        self._client.publish(topic, payload, qos=1)

    def close(self, timeout_s: float = 60.0) -> bool:
        """Wait for every PUBACK (up to the timeout), then disconnect; True if none is missing."""
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self._client.disconnect()
        self._client.loop_stop()
        return self.acked >= self.sent


def simulate(
    address: BrokerAddress, fleet: Fleet, args: argparse.Namespace, stop: threading.Event
) -> int:
    """Publish the fleet to `address` until stopped or `--duration-days` is reached."""
    start_ms = fleet.spec.start_ms
    if args.registry_out:
        write_registry_csv(fleet.registry_rows(), args.registry_out)
    publisher = QosPublisher(address, f"monitor-simulator-{args.seed}")
    publisher.listen_for_tariffs(fleet)
    end_ms = start_ms + int(args.duration_days * DAY_MS) if args.duration_days else None
    log.info(
        "simulating %d districts × %d meters and %d taxis from %s at %gx",
        args.districts,
        args.meters_per_district,
        args.taxis,
        datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(),
        args.speed,
    )
    try:
        return run_paced(
            fleet,
            publisher.publish,
            start_ms,
            args.speed,
            stop,
            end_ms=end_ms,
            backfill_ms=int(args.backfill_days * DAY_MS),
        )
    finally:
        if not publisher.close():
            log.warning(
                "%d message(s) not acknowledged by the broker", publisher.sent - publisher.acked
            )


def run_simulator(args: argparse.Namespace) -> int:
    """`monitor simulate --broker URL`: publish until interrupted or the duration ends."""
    stop = threading.Event()
    try:
        fleet = Fleet(fleet_spec(args, start_ms_of(args)))
        sent = simulate(parse_broker_url(args.broker), fleet, args, stop)
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(f"published {sent} messages")
    return 0


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """`monitor demo`: the service on embedded defaults plus a simulated fleet."""
    from monitor.service import Service

    start_ms = start_ms_of(args)
    clock = simulated_clock(start_ms + int(args.backfill_days * DAY_MS), args.speed)
    service = Service(settings, clock=clock)
    parts = service.start()
    fleet = Fleet(fleet_spec(args, start_ms))
    parts.state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
    stop = threading.Event()
    sim = threading.Thread(
        target=simulate, args=(parts.address, fleet, args, stop), name="simulator", daemon=True
    )
    sim.start()
    print(
        f"\nmeter-state monitor demo: broker {parts.address.url}, "
        f"API http://{settings.api.http}/api/meters (docs at /docs); Ctrl-C to stop\n",
        flush=True,
    )
    try:
        service.serve_http()
    finally:
        stop.set()
        sim.join(timeout=5)
        service.stop()
    return 0
