"""Starting the service as a newcomer does: the embedded broker, ports in use, --help."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitor.cli import build_parser
from monitor.core.registry import COLUMNS
from monitor.platform.broker import EmbeddedBroker
from tests.helpers import Counter, Publisher, wait_for
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def embedded() -> Iterator[str]:
    broker = EmbeddedBroker(f"127.0.0.1:{free_port()}")
    broker.start()
    try:
        yield f"mqtt://127.0.0.1:{broker.port}"
    finally:
        broker.stop()


def test_embedded_broker_sends_retained_messages_only_to_matching_subscriptions(
    embedded: str,
) -> None:
    # Sessions holding the filters the service, the simulator and a dashboard hold.
    holders = [
        Counter(embedded, "meters/#", "like-the-worker"),
        Counter(embedded, "meters/taxi/+/cmd/tariff", "like-the-simulator"),
        Counter(embedded, "monitor/decisions/#", "like-a-dashboard"),
    ]
    pub = Publisher(embedded, "retainer")
    tariff = ("meters/taxi/T1/cmd/tariff", b'{"version": "SH-2026"}', True)
    decision = ("monitor/decisions/elec/E1", b'{"decision": "keep"}', True)
    for topic, body, _ in (tariff, decision):
        pub.send(topic, body, retain=True)
    pub.wait_all()

    # A newcomer subscribed to a filter nothing matches gets nothing but its marker
    # (amqtt sent it every retained message, once per matching filter of any session).
    newcomer = Counter(embedded, "nothing/here", "newcomer")
    pub.send("nothing/here", b"marker")
    wait_for(lambda: newcomer.has(b"marker"), 10, "the marker")
    assert newcomer.copies == [("nothing/here", b"marker", False)]

    # A subscription that matches gets the retained message once, flagged retained.
    taxi = Counter(embedded, "meters/taxi/+/cmd/tariff", "a-taxi")
    pub.send("meters/taxi/T9/cmd/tariff", b"marker")
    wait_for(lambda: taxi.has(b"marker") and taxi.has(tariff[1]), 10, "marker and tariff")
    assert sorted(taxi.copies) == sorted([tariff, ("meters/taxi/T9/cmd/tariff", b"marker", False)])
    for c in [*holders, newcomer, taxi]:
        c.close()
    pub.close()


@contextmanager
def listening() -> Iterator[int]:
    """A port someone else listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("variable", ["MONITOR_HTTP", "MONITOR_EMBEDDED_MQTT"])
def test_a_port_in_use_is_refused_in_one_line(tmp_path: Path, command: str, variable: str) -> None:
    with listening() as port:
        env = {
            **os.environ,
            "MONITOR_CONFIG": str(REPO / "config"),
            "MONITOR_DATA_DIR": str(tmp_path / "data"),
            "MONITOR_HTTP": f"127.0.0.1:{free_port()}",
            "MONITOR_EMBEDDED_MQTT": f"127.0.0.1:{free_port()}",
            variable: f"127.0.0.1:{port}",
        }
        env.pop("MONITOR_MQTT_URL", None)
        run = subprocess.run(
            [sys.executable, "-m", "monitor", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert run.returncode == 3, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    what = "the API" if variable == "MONITOR_HTTP" else "the embedded MQTT broker"
    assert lines[0].startswith(
        f"monitor: {what} cannot listen on 127.0.0.1:{port}: the port is in use; set {variable} "
    )


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_and_option_has_help_and_says_its_default() -> None:
    commands = dict(_commands(build_parser()))
    assert {("demo",), ("simulate",), ("registry", "import"), ("rules", "backtest")} <= set(
        commands
    )
    for path, parser in commands.items():
        text = " ".join(parser.format_help().split())
        assert parser.description, path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, (path, action.dest)
            if action.option_strings and action.default not in (None, False):
                assert f"(default: {action.default})" in text, (path, action.dest)
    registry = " ".join(commands[("registry", "import")].format_help().split())
    assert all(column in registry for column in COLUMNS)
    run = subprocess.run(
        [sys.executable, "-m", "monitor", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert run.returncode == 0 and "exit codes:" in run.stdout and "demo" in run.stdout
