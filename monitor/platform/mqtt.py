"""Broker addresses and paho-mqtt clients, configured one way for every caller."""

from __future__ import annotations

import ssl
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is and how to log in."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    # TLS: the CA the broker's certificate must chain to (None: the system's), and an
    # optional client certificate. The host name is always verified.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(
    url: str,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> BrokerAddress:
    """`mqtt://[user:pass@]host:port` or `mqtts://…` → BrokerAddress (TLS files for mqtts)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"no host in broker URL {url!r}")
    return BrokerAddress(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ca_file=ca_file if tls else None,
        cert_file=cert_file if tls else None,
        key_file=key_file if tls else None,
    )


def make_client(
    address: BrokerAddress,
    client_id: str,
    protocol: str = "5",
    persistent: bool = False,
    manual_ack: bool = False,
) -> paho.Client:
    """A paho client for `address`; `persistent` keeps the session across reconnects."""
    v5 = protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else not persistent,
        manual_ack=manual_ack,
    )
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(
            ca_certs=address.ca_file,
            certfile=address.cert_file,
            keyfile=address.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def connect_properties(session_expiry_s: int, receive_maximum: int) -> Properties:
    """MQTT 5 CONNECT properties of a persistent worker session."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    props.ReceiveMaximum = receive_maximum
    return props


# A PUBACK with its 2-byte length and message id, as one big-endian word (MQTT
# 3.1.1 and 5: reason "success" without properties may be left out).
_PUBACK_WORD = (paho.PUBACK << 24) | (2 << 16)


def ack_all(client: paho.Client, mids: Sequence[int], batched: bool = True) -> None:
    """PUBACK QoS 1 messages (manual ack) in one write, in the order given.

    paho's `ack()` queues one packet per message and wakes its network thread
    for each (a socket write on both sides, ~25 us of Python per message); here
    the PUBACKs go out as one buffer through the same internal queue (paho 2.1
    and 2.2; pyproject pins the range). Where that queue is missing or has
    another signature it falls back to `ack()` per message, which is also what
    `batched=False` does. Like `ack()`, nothing here is durable: acks queued
    while disconnected are dropped with the connection and the broker
    redelivers those messages.
    """
    if not mids:
        return
    queue = getattr(client, "_packet_queue", None) if batched else None
    if queue is not None:
        packet = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
        try:
            queue(paho.PUBACK, packet, 0, 0)
            return
        except TypeError:  # a paho whose internal queue changed: the public way
            pass
    for mid in mids:
        client.ack(mid, 1)


class PublishLink:
    """A short-lived QoS 1 publisher for a command that runs without the service.

        link = PublishLink(address, "monitor-evaluate")
        if link.connect(timeout_s=5): link.publish(topic, payload, retain=True)
        link.close()  # waits for the broker's acknowledgements

    `publish` raises ConnectionError when the broker is not reachable, like the
    ingest worker's, so a caller with a durable outbox keeps the message.
    """

    def __init__(self, address: BrokerAddress, client_id: str) -> None:
        self._address = address
        self._client = make_client(address, client_id, protocol="3.1.1")
        self._client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish

    def _on_connect(
        self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        if not getattr(reason, "is_failure", False):
            self._connected.set()

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        with self._lock:
            self._pending.discard(mid)

    def connect(self, timeout_s: float) -> bool:
        """Try the broker once; True when connected within the timeout."""
        try:
            self._client.connect(self._address.host, self._address.port, keepalive=30)
        except OSError:
            return False
        self._client.loop_start()
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish QoS 1; ConnectionError when the broker is not there."""
        if not self._connected.is_set():
            raise ConnectionError(f"not connected to {self._address.url}")
        with self._lock:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"publish to {topic}: {paho.error_string(info.rc)}")
            self._pending.add(info.mid)

    def close(self, timeout_s: float = 10.0) -> int:
        """Wait for outstanding acknowledgements, disconnect; returns how many never came."""
        deadline = time.monotonic() + timeout_s
        while self._connected.is_set() and time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.02)
        with self._lock:
            missing = len(self._pending)
        if self._connected.is_set():
            self._client.disconnect()
        self._client.loop_stop()
        return missing
