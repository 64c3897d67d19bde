"""The embedded MQTT broker (amqtt) for running with nothing installed.

It runs in a process of its own: amqtt shares the GIL with whatever runs
beside it, and sharing a process with the worker's paho thread halves both.
`python -m monitor.platform.broker HOST:PORT` is that process; it writes one
line to stdout, `ready` once it listens or `error <reason>` when it cannot, so
the service never probes the port with a connection the broker would log as
a broken client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
from typing import Any

from monitor.platform.config import split_host_port
from monitor.platform.listen import StartupError, ensure_free, refusal

log = logging.getLogger(__name__)

_WHAT = "the embedded MQTT broker"
_REMEDY = (
    "set MONITOR_EMBEDDED_MQTT to a free host:port, "
    "or MONITOR_MQTT_URL to use the broker listening there"
)


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
        """Start the broker and wait until it listens; StartupError (one line) if it cannot."""
        ensure_free(self.host or "0.0.0.0", self.port, _WHAT, _REMEDY)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.platform.broker", self.bind], stdout=subprocess.PIPE
        )
        try:
            line = self._first_line(timeout_s)
        except StartupError:
            self.stop()
            raise
        if line != "ready":
            self.stop()
            raise StartupError(line.removeprefix("error "))
        log.info("embedded MQTT broker (amqtt) listening on %s", self.bind)

    def _first_line(self, timeout_s: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        ready, _, _ = select.select([out], [], [], timeout_s)
        if not ready:
            raise StartupError(f"{_WHAT} did not listen on {self.bind} within {timeout_s:g} s")
        line = out.readline().decode("utf-8", "replace").strip()
        out.close()  # nothing more is written there
        if not line:
            code = self._proc.wait(timeout=5)
            return f"error {_WHAT} exited with code {code} before listening on {self.bind}"
        return line

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


def make_broker(config: dict[str, object]) -> Any:
    """An amqtt Broker that sends a retained message only to a session subscribed to a
    filter matching it.

    amqtt 0.12 sends, to every client that connects, the retained messages matching any
    filter that *any* session holds (once per filter): `mosquitto_sub -t nothing/here`
    got every retained decision and tariff command, twice. MQTT 3.1.1 §3.3.1.3 sends
    retained messages to new subscriptions whose filter matches them, so here they go
    only where the session itself holds that filter.
    """
    from amqtt.broker import Broker

    class FilteringBroker(Broker):  # type: ignore[misc]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], ())
            if any(s.client_id == session.client_id for s, _ in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return FilteringBroker(config)


async def serve(bind: str) -> int:
    """Run amqtt until cancelled, or until the service that started it is gone."""
    parent = os.getppid()
    amqtt_log = logging.getLogger("amqtt")
    # amqtt logs a failed bind as a traceback; the parent prints the one-line reason.
    amqtt_log.setLevel(logging.CRITICAL)
    broker = make_broker(broker_config(bind))
    try:
        await broker.start()
    except Exception as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError):
            host, port = split_host_port(bind)
            line = refusal(host, port, _WHAT, _REMEDY, cause)
        else:
            line = f"{_WHAT} cannot listen on {bind}: {exc}"
        print(f"error {line}", flush=True)
        return 3
    amqtt_log.setLevel(logging.WARNING)
    print("ready", flush=True)
    try:
        # A service killed with SIGKILL cannot stop its child: the child notices
        # it was orphaned (re-parented) and leaves instead of holding the port.
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("embedded broker: parent process gone, shutting down")
    finally:
        await broker.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the broker process."""
    args = sys.argv[1:] if argv is None else argv
    bind = args[0] if args else "127.0.0.1:1883"
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(serve(bind))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
