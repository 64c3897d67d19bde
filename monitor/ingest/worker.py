"""The ingest worker: MQTT in, validated batches to the store, dead letters out.

The paho network thread only appends to a queue (it is the throughput
ceiling). One processing thread takes batches, validates the raw bytes,
writes the batch durably, publishes dead letters, and only then acknowledges
every message of the batch, in order, in one write (manual acks). A worker
killed mid-batch has acknowledged nothing it had not stored, so the broker
redelivers it. Meters seen are gathered in memory and written to the state
every `seen_flush_s` and on stop (reads of the state flush first).

The registry is authoritative for its meters' districts: the worker keeps an
in-memory map meter → district, reloaded only when the state's registry
version moves (one small query per batch), so no message costs a query.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as paho

from monitor.core.ports import IngestState, Mismatch, SeenUpdate, TelemetryStore
from monitor.core.schema import Record
from monitor.ingest.limits import IngestSettings, Limits
from monitor.ingest.telemetry import Rejection, Route, parse_message, route_topic
from monitor.platform.config import MqttSettings
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import BrokerAddress, ack_all, connect_properties, make_client

log = logging.getLogger(__name__)


class Inbound(NamedTuple):
    """A message as the network thread hands it over (a tuple: cheap on that thread)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received: float


def deadletter_body(
    topic: str, payload: bytes, rejection: Rejection, received: float, cap: int
) -> bytes:
    """The dead-letter JSON of docs/mqtt.md (payload base64 when it is not UTF-8)."""
    body: dict[str, Any] = {"topic": topic, "reason": rejection.reason, "detail": rejection.detail}
    kept = payload[:cap]
    try:
        body["payload"] = kept.decode("utf-8")
        body["encoding"] = "utf-8"
    except UnicodeDecodeError:
        body["payload"] = base64.b64encode(kept).decode("ascii")
        body["encoding"] = "base64"
    if len(kept) < len(payload):
        body["truncated_from_bytes"] = len(payload)
    body["received_at"] = datetime.fromtimestamp(received, UTC).isoformat(timespec="milliseconds")
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _kind_of(topic: str, root: str) -> str:
    rest = topic[len(root) + 1 :] if topic.startswith(root + "/") else ""
    kind = rest.split("/", 1)[0]
    return kind if kind in ("elec", "taxi") else "other"


_KINDS_CACHED = 65536  # topics whose kind label is remembered (a fleet's topics are few)


def summarise_seen(records: list[Record], received: float) -> dict[str, SeenUpdate]:
    """Per meter: kind, district, event-time span and message count of a batch."""
    out: dict[str, SeenUpdate] = {}
    for r in records:
        prev = out.get(r.meter)
        if prev is None:
            out[r.meter] = SeenUpdate(r.measurement.kind, r.district, r.ts_ms, r.ts_ms, 1, received)
        else:
            out[r.meter] = SeenUpdate(
                prev.kind,
                prev.district or r.district,
                min(prev.first_ts, r.ts_ms),
                max(prev.last_ts, r.ts_ms),
                prev.messages + 1,
                received,
            )
    return out


class IngestWorker:
    """Subscribes to telemetry and stores it.

    worker = IngestWorker(settings.mqtt, address, store, state, metrics)
    worker.start(); ...; worker.stop()
    """

    def __init__(
        self,
        settings: MqttSettings,
        address: BrokerAddress,
        store: TelemetryStore,
        state: IngestState,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        ingest: IngestSettings | None = None,
    ) -> None:
        """`clock` is the receive clock (epoch s): timestamps are validated against it
        and it stamps when meters were last heard from (injectable: tests, the demo's
        simulated world). Ingest lag and dead letters keep the wall clock."""
        self._s = settings
        self._limits = Limits.of(ingest or IngestSettings())
        self._districts: dict[str, str] = {}  # registered meter → its district
        self._registry_version: int | None = None
        self._address = address
        self._store = store
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._client = make_client(
            address, settings.client_id, settings.protocol, persistent=True, manual_ack=True
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(
            int(settings.reconnect_min_s), int(settings.reconnect_max_s)
        )
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._kinds: dict[str, str] = {}  # topic → metric label
        self._seen_due = 0.0  # monotonic time of the next flush of meters seen
        self.processed = 0
        self.last_event_ms = 0

    # -- network thread ----------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            return
        client.subscribe(self._s.subscription, qos=1)
        self._metrics.broker_connected.set(1)
        log.info(
            "connected to %s, subscribed to %s (session present: %s)",
            self._address.url,
            self._s.subscription,
            flags.session_present,
        )

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        # Connected means subscribed: a fresh session receives nothing published
        # before the broker has taken its SUBSCRIBE.
        refused = [c for c in codes if c.is_failure]
        if refused:
            log.error("broker refused the subscription %s: %s", self._s.subscription, refused)
            return
        self._connected.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self._disconnected.set()
        self._metrics.broker_connected.set(0)
        if not self._stopping.is_set():
            log.warning("disconnected from broker (%s); paho reconnects with backoff", reason)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.put(Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time()))

    # -- lifecycle ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect (asynchronously, retried by paho) and start processing."""
        kwargs: dict[str, Any] = {"keepalive": self._s.keepalive_s}
        if self._s.protocol == "5":
            kwargs["clean_start"] = False
            kwargs["properties"] = connect_properties(
                self._s.session_expiry_s, self._s.receive_maximum
            )
        self._client.connect_async(self._address.host, self._address.port, **kwargs)
        self._client.loop_start()
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until subscribed to the broker, or the timeout."""
        return self._connected.wait(timeout_s)

    def stop(self, drain_s: float = 5.0) -> None:
        """Process what is queued (up to `drain_s`), then disconnect."""
        deadline = time.monotonic() + drain_s
        while not self._inbox.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        self._thread.join(timeout=drain_s + 5)
        self._disconnected.clear()
        if self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
            # The DISCONNECT is queued behind the last PUBACKs and publishes; stopping
            # the network loop before it is written would drop them (redelivered later).
            self._disconnected.wait(5.0)
        self._client.loop_stop()
        self._metrics.broker_connected.set(0)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish QoS 1 on the worker's connection; raise when it cannot be handed on.

        While disconnected paho would keep the message in memory only, so a caller
        with a durable outbox (alerts) must hear about it and retry from there.
        """
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(
                f"publish to {topic} not handed to the broker: {paho.error_string(info.rc)}"
            )

    # -- processing thread -------------------------------------------------

    def _run(self) -> None:
        self._seen_due = time.monotonic() + self._s.seen_flush_s
        while not self._stopping.is_set():
            batch = self._take_batch()
            if batch:
                try:
                    self._process(batch)
                except Exception:  # never let one batch kill the worker
                    log.exception(
                        "batch of %d failed; not acknowledged, broker will redeliver", len(batch)
                    )
            if time.monotonic() >= self._seen_due:
                self._flush_seen()
        self._flush_seen()

    def _take_batch(self) -> list[Inbound]:
        try:
            batch = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._s.batch_wait_ms / 1000
        while len(batch) < self._s.batch_max:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._inbox.get(timeout=remaining))
                except queue.Empty:
                    break
        return batch

    def _refresh_registry(self) -> None:
        """Reload the meter → district map when the registry changed (else nothing)."""
        try:
            version = self._state.registry_version()
            if version != self._registry_version:
                self._districts = self._state.registry_districts()
                self._registry_version = version
        except Exception:  # keep the last map; the next batch tries again
            log.exception("could not refresh the registry's districts")

    def _process(self, batch: list[Inbound]) -> None:
        self._refresh_registry()
        records: list[Record] = []
        rejected: list[tuple[Inbound, Rejection]] = []
        kinds: Counter[str] = Counter()
        ignored = 0
        root, cap = self._s.topic_root, self._s.max_payload_bytes
        known, limits, districts = self._kinds, self._limits, self._districts
        received_ms = int(self._clock() * 1000)  # one reading per batch
        for msg in batch:
            topic = msg.topic
            kind = known.get(topic)
            if kind is None:
                kind = _kind_of(topic, root)
                if len(known) < _KINDS_CACHED:
                    known[topic] = kind
            kinds[kind] += 1
            result = parse_message(topic, msg.payload, root, cap, limits, received_ms, districts)
            if result is None:
                ignored += 1
            elif isinstance(result, Rejection):
                rejected.append((msg, result))
            else:
                records.append(result)
        if records and not self._store_durably(records):
            return  # stopping before the store accepted: leave unacknowledged
        self._note_seen(records)
        self._note_mismatches(rejected)
        self._deadletter(rejected)
        self._acknowledge(batch)
        self._count(batch, records, kinds, ignored, rejected)

    def _store_durably(self, records: list[Record]) -> bool:
        backoff = 0.2
        while True:
            try:
                self._store.write(records)
                return True
            except Exception as exc:
                self._metrics.store_errors.labels(backend=self._store.backend).inc()
                log.error(
                    "store write of %d points failed (%s); retrying in %.1fs",
                    len(records),
                    exc,
                    backoff,
                )
            if self._stopping.wait(backoff):
                return False
            backoff = min(backoff * 2, 30.0)

    def _note_seen(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            self._state.note_records(records, self._clock())
        except Exception:  # presence bookkeeping must not block telemetry
            log.exception("could not record meters seen")

    def _note_mismatches(self, rejected: list[tuple[Inbound, Rejection]]) -> None:
        # Kept in the state so that repeats can raise an alert (the service's check).
        found = []
        for msg, rej in rejected:
            route = route_topic(msg.topic, self._s.topic_root)
            if rej.reason != "district_mismatch" or not isinstance(route, Route):
                continue
            registered = self._districts.get(route.meter, "")
            ts = rej.ts_ms or 0
            found.append(Mismatch(route.meter, route.district, registered, ts, msg.received))
        if not found:
            return
        try:
            self._state.note_mismatches(found)
        except Exception:  # the dead letter and the metric still say it
            log.exception("could not record district mismatches")

    def _flush_seen(self) -> None:
        self._seen_due = time.monotonic() + self._s.seen_flush_s
        try:
            self._state.flush_seen()
        except Exception:  # kept in memory, written by the next flush
            log.exception("could not write meters seen")

    def _deadletter(self, rejected: list[tuple[Inbound, Rejection]]) -> None:
        for msg, rej in rejected:
            body = deadletter_body(
                msg.topic, msg.payload, rej, msg.received, self._s.max_payload_bytes
            )
            self._client.publish(self._s.deadletter_topic, body, qos=1)
            log.debug("dead-lettered %s: %s %s", msg.topic, rej.reason, rej.detail)

    def _acknowledge(self, batch: list[Inbound]) -> None:
        ack_all(self._client, [msg.mid for msg in batch if msg.qos == 1])
        for msg in batch:
            if msg.qos == 2:
                self._client.ack(msg.mid, msg.qos)

    def _count(
        self,
        batch: list[Inbound],
        records: list[Record],
        kinds: Counter[str],
        ignored: int,
        rejected: list[tuple[Inbound, Rejection]],
    ) -> None:
        m = self._metrics
        now = time.time()
        for kind, n in kinds.items():
            m.received.labels(kind=kind).inc(n)
        for reason, n in Counter(rej.reason for _, rej in rejected).items():
            m.rejected.labels(reason=reason).inc(n)
        if rejected:
            m.deadletters.inc(len(rejected))
        if ignored:
            m.ignored.inc(ignored)
        if records:
            self.last_event_ms = max(self.last_event_ms, max(r.ts_ms for r in records))
            m.last_event_ts.set(self.last_event_ms / 1000)
        m.batch_size.observe(len(batch))
        # One observation per batch, of its oldest message: the worst lag it saw.
        m.ingest_lag.observe(now - batch[0].received)
        self.processed += len(batch)
