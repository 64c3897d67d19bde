"""The embedded MQTT broker (amqtt) for running with nothing installed.

It runs in a process of its own: amqtt shares the GIL with whatever runs
beside it, and sharing a process with the worker's paho thread halves both.
`python -m monitor.platform.broker HOST:PORT` is that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time

from monitor.platform.config import split_host_port

log = logging.getLogger(__name__)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A child process running amqtt on `bind` (host:port).

    broker = EmbeddedBroker("127.0.0.1:1883"); broker.start(); ...; broker.stop()
    """

    def __init__(self, bind: str) -> None:
        self.bind = bind
        self.host, self.port = split_host_port(bind)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def client_host(self) -> str:
        """Address clients in this process use to reach it."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if port_open(self.client_host, self.port):
            raise RuntimeError(
                f"{self.bind} is already in use: set MONITOR_EMBEDDED_MQTT to a free host:port, "
                "or MONITOR_MQTT_URL to use the broker that is listening there"
            )
        self._proc = subprocess.Popen([sys.executable, "-m", "monitor.platform.broker", self.bind])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited with {self._proc.returncode}")
            if port_open(self.client_host, self.port):
                log.info("embedded MQTT broker (amqtt) listening on %s", self.bind)
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"embedded broker did not listen on {self.bind} within {timeout_s}s")

    def stop(self) -> None:
        """Stop the broker process."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def broker_config(bind: str) -> dict[str, object]:
    """amqtt configuration: one TCP listener, anonymous access (loopback use)."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind, "max_connections": 0}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(bind: str) -> None:
    """Run amqtt until cancelled, or until the service that started it is gone."""
    from amqtt.broker import Broker

    parent = os.getppid()
    broker = Broker(broker_config(bind))
    await broker.start()
    try:
        # A service killed with SIGKILL cannot stop its child: the child notices
        # it was orphaned (re-parented) and leaves instead of holding the port.
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("embedded broker: parent process gone, shutting down")
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the broker process."""
    args = sys.argv[1:] if argv is None else argv
    bind = args[0] if args else "127.0.0.1:1883"
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(bind))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
