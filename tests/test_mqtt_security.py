"""The broker secured as docs/deployment.md says: a real Mosquitto with a TLS listener
(certificates made here), per-meter passwords and the topic ACL that `monitor mqtt acl`
generates from the registry. A meter cannot publish as another meter; the worker, on its
own least-rights account and verifying the server's certificate, still ingests."""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from monitor.cli import main
from monitor.core.registry import parse_rows
from monitor.platform.config import load_settings
from monitor.service import Service
from monitor.store.state import SqliteState
from tests.conftest import _require
from tests.helpers import BASE_MS, wait_for
from tests.services import Mosquitto, find_mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
REGISTRY = [
    {"meter_id": "E1", "kind": "elec", "role": "customer", "district": "D1"},
    {"meter_id": "E2", "kind": "elec", "role": "customer", "district": "D1"},
    {"meter_id": "T1", "kind": "taxi"},
]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
    hosts: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(where: Path, ca_name: str = "test-ca") -> Path:
    """A CA and a server certificate for localhost / 127.0.0.1; returns the folder."""
    where.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_name, ca_key, None, ca=True)
    _write(where / "ca", ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    _write(where / "server", _cert("localhost", key, (ca_name, ca_key), hosts=True), key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write(where / "client", _cert("monitor", client_key, (ca_name, ca_key)), client_key)
    return where


class Meter:
    """A paho client logged in as one meter, over TLS, verifying the server."""

    def __init__(
        self, port: int, user: str, password: str, ca: Path, cert: Path | None = None
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv311
        )
        self.client.username_pw_set(user, password)
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=str(cert.with_suffix(".crt")) if cert else None,
            keyfile=str(cert.with_suffix(".key")) if cert else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        self.connected = threading.Event()
        self.refused: list[Any] = []
        self.dropped = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.dropped.set()
        self.client.connect("localhost", port)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused.append(reason)
        else:
            self.connected.set()

    def send(self, topic: str, body: dict[str, Any]) -> None:
        info = self.client.publish(topic, json.dumps(body), qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=[False, True], ids=["server-cert", "client-certs"])
def secured(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Registry, generated ACL and passwords, and a TLS Mosquitto using them (with
    client certificates required, or not)."""
    _require(find_mosquitto, "mosquitto", "mosquitto")
    data = tmp_path / "data"
    state = SqliteState(data / "state.sqlite")
    state.upsert_meters(parse_rows(REGISTRY).rows)
    state.close()
    env = {"MONITOR_CONFIG": str(REPO / "config"), "MONITOR_DATA_DIR": str(data)}
    acl, passwd, creds = tmp_path / "acl", tmp_path / "passwd", tmp_path / "credentials.csv"
    assert main(["mqtt", "acl", "--out", str(acl)], env) == 0
    assert main(["mqtt", "passwords", "--out", str(passwd), "--credentials", str(creds)], env) == 0
    with creds.open() as f:
        passwords = {row["user"]: row["password"] for row in csv.DictReader(f)}
    pki = make_pki(tmp_path / "pki")
    broker = Mosquitto(
        tmp_path / "mosquitto",
        tls=(pki / "ca.crt", pki / "server.crt", pki / "server.key"),
        password_file=passwd,
        acl_file=acl,
        require_certificate=request.param,
    )
    broker.start()
    try:
        yield {
            "broker": broker,
            "env": env,
            "passwords": passwords,
            "pki": pki,
            "data": data,
            "client_certs": request.param,
        }
    finally:
        broker.stop()


def _reading(i: int) -> dict[str, Any]:
    return {"ts": BASE_MS + i * 900_000, "energy_kwh": 100 + i}


def test_meters_publish_only_as_themselves_and_the_worker_ingests(
    secured: dict[str, Any],
) -> None:
    broker, pw, pki = secured["broker"], secured["passwords"], secured["pki"]
    env = {
        **secured["env"],
        "MONITOR_MQTT_URL": f"mqtts://monitor:{pw['monitor']}@localhost:{broker.port}",
        "MONITOR_MQTT__CA_FILE": str(pki / "ca.crt"),
        "MONITOR_HTTP": f"127.0.0.1:{free_port()}",
        "MONITOR_SCHEDULING__EVALUATE_CRON": "",
    }
    client_cert = pki / "client" if secured["client_certs"] else None
    if client_cert is not None:  # the worker presents its certificate
        env["MONITOR_MQTT__CERT_FILE"] = str(pki / "client.crt")
        env["MONITOR_MQTT__KEY_FILE"] = str(pki / "client.key")
    service = Service(load_settings(REPO / "config", env))
    parts = service.start()
    meter: Meter | None = None
    try:
        wait_for(lambda: parts.worker.connected, 30, "the worker's TLS connection")
        meter = Meter(broker.port, "E1", pw["E1"], pki / "ca.crt", client_cert)
        assert meter.connected.wait(10), meter.refused
        # E1 claims to be E2 first, then sends its own reading on the same connection:
        # the broker passes messages on in order, so once E1's arrives, E2's was dropped.
        meter.send("meters/elec/D1/E2/reading", _reading(1))
        meter.send("meters/elec/D1/E1/reading", _reading(2))
        wait_for(lambda: parts.state.seen("E1") is not None, 30, "E1's own reading ingested")
        assert parts.state.seen("E2") is None
        # nor under another district: the registry pins E1 to D1
        meter.send("meters/elec/D9/E1/reading", _reading(3))
        meter.send("meters/elec/D1/E1/reading", _reading(4))
        wait_for(lambda: (parts.state.seen("E1") or {}).get("messages") == 2, 30, "E1 twice")
        assert (parts.state.seen("E1") or {})["district"] == "D1"
    finally:
        if meter is not None:
            meter.close()
        service.stop()


def test_a_wrong_password_and_an_unknown_server_are_refused(
    secured: dict[str, Any], tmp_path: Path
) -> None:
    broker, pw, pki = secured["broker"], secured["passwords"], secured["pki"]
    cert = pki / "client" if secured["client_certs"] else None
    if cert is not None:  # no client certificate: the broker drops the connection
        try:
            bare = Meter(broker.port, "E1", pw["E1"], pki / "ca.crt")
        except (ssl.SSLError, OSError):
            pass  # refused during the handshake
        else:
            wait_for(lambda: bare.dropped.is_set() or bool(bare.refused), 10, "the refusal")
            assert not bare.connected.is_set()
            bare.close()
    wrong = Meter(broker.port, "E1", pw["E2"], pki / "ca.crt", cert)
    wait_for(lambda: bool(wrong.refused), 10, "the broker's refusal")
    assert not wrong.connected.is_set()
    wrong.close()
    # a client trusting another CA does not talk to this server (no silent downgrade)
    other = make_pki(tmp_path / "other", "other-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        Meter(broker.port, "E1", pw["E1"], other / "ca.crt")


def test_the_generated_acl_pins_each_meter(secured: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "acl-pattern"
    assert main(["mqtt", "acl", "--mode", "pattern", "--out", str(out)], secured["env"]) == 0
    assert "pattern write meters/elec/+/%u/reading" in out.read_text()
    text = (tmp_path / "acl").read_text()
    assert "user E1\ntopic write meters/elec/D1/E1/reading\n" in text
    assert "user T1\ntopic write meters/taxi/T1/trip\n" in text
    assert "topic read meters/taxi/T1/cmd/#" in text
    assert "user monitor\ntopic read meters/#\n" in text
