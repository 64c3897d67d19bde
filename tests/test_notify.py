"""Alert routing and delivery: a real local webhook over HTTP, a real SQLite outbox across
restarts, real AlertBook changes, and a fake clock so backoff and escalation never sleep."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.alerts.book import AlertBook, Condition
from monitor.alerts.notifier import Notifier
from monitor.alerts.routing import (
    Receiver,
    Route,
    RoutingSettings,
    idempotency_key,
    member_key,
)

BASE_MS = 1772294400000  # 2026-03-01T00:00:00+08:00, as in tests.helpers
DAY_MS = 86_400_000


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Hook:
    """A local webhook receiver on a free port: answers its first `fail_first` requests
    with `fail_status`, then 200; records every request's Idempotency-Key and body.

    The socket is bound at once (the port is ours) but only listens after `start()`,
    so before that the receiver is down: connections are refused.
    """

    def __init__(
        self,
        fail_first: int = 0,
        fail_status: int = 500,
        fail_headers: dict[str, str] | None = None,
    ) -> None:
        self.fail_first, self.fail_status = fail_first, fail_status
        self.fail_headers = fail_headers or {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.accepted: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(
            ("127.0.0.1", 0), self._handler(), bind_and_activate=False
        )
        self.server.server_bind()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = hook.record(self.headers.get("Idempotency-Key", ""), body)
                self.send_response(status)
                for name, value in (hook.fail_headers if status != 200 else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def record(self, key: str, body: dict[str, Any]) -> int:
        with self._lock:
            self.requests.append((key, body))
            if len(self.requests) <= self.fail_first:
                return self.fail_status
            self.accepted.append(key)
            return 200

    def start(self) -> Hook:
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Callable[..., Hook]]:
    made: list[Hook] = []

    def make(**kwargs: Any) -> Hook:
        made.append(Hook(**kwargs))
        return made[-1]

    yield make
    for hook in made:
        hook.stop()


@pytest.fixture
def book(tmp_path: Path) -> Iterator[AlertBook]:
    b = AlertBook(tmp_path / "state.sqlite", clear_after_ms=2 * DAY_MS)
    yield b
    b.close()


class Published:
    """A publish callable that records (topic, payload) and the retain flag of each
    message, and can fail its first calls."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.retained: list[bool] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("broker unreachable")
        self.messages.append((topic, json.loads(payload)))
        self.retained.append(retain)

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]


def cond(
    subject: str = "E1",
    rule: str = "elec.error_limit",
    kind: str = "elec",
    severity: str = "major",
    lot: str | None = "L1",
    district: str | None = "D1",
) -> Condition:
    meter = None if kind in ("lot", "district") else subject
    return Condition(
        rule, kind, subject, severity, f"{subject}: {rule}", BASE_MS, {"error_pct": 4.2},
        meter=meter, lot=lot, district=district,
    )  # fmt: skip


def webhook_routing(url: str, **receiver: Any) -> RoutingSettings:
    return RoutingSettings(
        receivers=(Receiver(name="hook", type="webhook", url=url, **receiver),),
        routes=(Route(name="all", receivers=("hook",)),),
    )


@pytest.fixture
def closing() -> Iterator[Callable[[Notifier], Notifier]]:
    """Closes every notifier a test made, even when it fails."""
    made: list[Notifier] = []

    def keep(n: Notifier) -> Notifier:
        made.append(n)
        return n

    yield keep
    for n in made:
        n.close()


# -- settings -------------------------------------------------------------------


def test_default_routing_publishes_everything_on_the_contract_topic() -> None:
    routing = RoutingSettings()
    assert [(r.name, r.type, r.topic) for r in routing.receivers] == [
        ("mqtt", "mqtt", "monitor/alerts/{severity}/{kind}")
    ]
    assert routing.routes[0].receivers == ("mqtt",) and routing.routes[0].matches({})


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(
        ValidationError, match=r"route 'crit' names undefined receiver\(s\) \['pager'\]"
    ):
        RoutingSettings.model_validate(
            {
                "receivers": [{"name": "mqtt", "type": "mqtt"}],
                "routes": [{"name": "crit", "receivers": ["mqtt"], "escalate_after_s": 60,
                            "escalate_to": ["pager"]}],
            }
        )  # fmt: skip
    with pytest.raises(ValidationError, match="needs an http"):
        Receiver(name="hook", type="webhook")
    with pytest.raises(ValidationError, match=r"does not take \['url'\]"):
        Receiver(name="m", type="mqtt", url="http://x")
    with pytest.raises(ValidationError, match="unknown field"):
        Receiver(name="m", type="mqtt", topic="alerts/{meter_id}")
    with pytest.raises(ValidationError, match="wildcard"):
        Receiver(name="m", type="mqtt", topic="alerts/#")
    with pytest.raises(ValidationError, match="needs escalate_to"):
        Route(name="r", receivers=("m",), escalate_after_s=60)
    with pytest.raises(ValidationError, match="must exceed group_window_s"):
        Route(
            name="r", receivers=("m",), group_window_s=60, escalate_after_s=30, escalate_to=("m",)
        )
    with pytest.raises(ValidationError, match="unique"):
        RoutingSettings(receivers=(Receiver(name="m", type="log"), Receiver(name="m", type="log")))
    with pytest.raises(ValidationError, match="extra"):
        Route.model_validate({"name": "r", "receivers": ["m"], "severity": ["critical"]})


def test_mqtt_receiver_needs_a_publish_callable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no publish callable"):
        Notifier(RoutingSettings(), tmp_path / "notify.sqlite", None)


# -- webhook delivery -----------------------------------------------------------


def test_webhook_retried_with_backoff_is_delivered_once_per_key(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    hook = hooks(fail_first=2).start()
    clock = Clock()
    routing = webhook_routing(hook.url, backoff_s=10, backoff_max_s=60)
    n = closing(Notifier(routing, tmp_path / "notify.sqlite", None, clock))
    [opened] = book.observe([cond()], BASE_MS)
    n.submit([opened])

    assert n.tick() == 0 and len(hook.requests) == 1  # 500
    clock.advance(9.9)
    assert n.tick() == 0 and len(hook.requests) == 1  # backoff (10 s) not over
    clock.advance(0.1)
    assert n.tick() == 0 and len(hook.requests) == 2  # 500 again; next wait 20 s
    clock.advance(19.9)
    assert n.tick() == 0 and len(hook.requests) == 2
    clock.advance(0.1)
    assert n.tick() == 1 and len(hook.requests) == 3
    for _ in range(5):
        clock.advance(1000)
        assert n.tick() == 0
    n.submit([opened])  # the same change again (e.g. a replay): same key, not re-sent
    clock.advance(1000)
    assert n.tick() == 0

    key = idempotency_key("hook", [member_key(opened.alert, "opened")])
    assert [k for k, _ in hook.requests] == [key] * 3 and hook.accepted == [key]
    body = hook.requests[-1][1]
    assert body == {
        "idempotency_key": key,
        "action": "opened",
        "alerts": [opened.alert],
        "receiver": "hook",
        "route": "all",
    }
    assert {k: n.stats()[k] for k in ("delivered", "retried", "failed", "pending")} == {
        "delivered": 1, "retried": 2, "failed": 0, "pending": 0,
    }  # fmt: skip


def test_a_4xx_gives_up_at_once_and_is_counted(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    hook = hooks(fail_first=10**6, fail_status=400).start()
    clock = Clock()
    n = closing(Notifier(webhook_routing(hook.url), tmp_path / "notify.sqlite", None, clock))
    n.submit(book.observe([cond()], BASE_MS))
    assert n.tick() == 0
    for _ in range(5):
        clock.advance(3600)
        n.tick()
    assert len(hook.requests) == 1
    stats = n.stats()
    assert stats["failed"] == 1 and stats["retried"] == 0 and n.pending() == 0


def test_429_waits_for_retry_after_and_408_is_retried(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    hook = hooks(fail_first=1, fail_status=429, fail_headers={"Retry-After": "30"}).start()
    clock = Clock()
    routing = webhook_routing(hook.url, backoff_s=1, backoff_max_s=120)
    n = closing(Notifier(routing, tmp_path / "notify.sqlite", None, clock))
    n.submit(book.observe([cond()], BASE_MS))
    assert n.tick() == 0
    clock.advance(29)
    assert n.tick() == 0 and len(hook.requests) == 1  # the server asked for 30 s
    clock.advance(1)
    assert n.tick() == 1 and len(hook.requests) == 2

    hook.fail_first, hook.fail_status, hook.fail_headers = 3, 408, {}
    n.submit(book.observe([cond("E2")], BASE_MS))
    assert n.tick() == 0
    clock.advance(2)
    assert n.tick() == 1 and n.stats()["failed"] == 0


def test_max_attempts_bounds_retries(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    hook = hooks(fail_first=10**6).start()
    clock = Clock()
    routing = webhook_routing(hook.url, max_attempts=3, backoff_s=5)
    n = closing(Notifier(routing, tmp_path / "notify.sqlite", None, clock))
    n.submit(book.observe([cond()], BASE_MS))
    for _ in range(10):
        n.tick()
        clock.advance(100)
    assert len(hook.requests) == 3
    assert n.stats()["failed"] == 1 and n.stats()["retried"] == 2 and n.pending() == 0


def test_outbox_survives_a_restart_without_loss_or_storm(
    tmp_path: Path, book: AlertBook, hooks: Callable[..., Hook]
) -> None:
    hook = hooks()  # bound, not listening: down
    clock = Clock()
    routing = webhook_routing(hook.url, backoff_s=5)
    path = tmp_path / "notify.sqlite"
    first = Notifier(routing, path, None, clock)
    changes = book.observe([cond("E1"), cond("E2")], BASE_MS)
    first.submit(changes)
    assert first.tick() == 0 and first.pending() == 2 and first.stats()["retried"] == 1
    first.close()  # the process goes away with both undelivered

    hook.start()
    clock.advance(5)
    second = Notifier(routing, path, None, clock)
    assert second.pending() == 2
    assert second.tick() == 2
    clock.advance(3600)
    assert second.tick() == 0
    second.close()

    third = Notifier(routing, path, None, clock)  # another restart: nothing re-sent
    clock.advance(3600)
    assert third.tick() == 0 and third.pending() == 0
    third.close()
    keys = [idempotency_key("hook", [member_key(c.alert, "opened")]) for c in changes]
    assert sorted(hook.accepted) == sorted(keys) and len(hook.requests) == 2


def test_a_down_receiver_costs_one_attempt_per_tick_and_does_not_hold_up_others(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    down, up = hooks(), hooks().start()
    routing = RoutingSettings(
        receivers=(
            Receiver(name="down", type="webhook", url=down.url),
            Receiver(name="up", type="webhook", url=up.url),
        ),
        routes=(Route(name="all", receivers=("down", "up")),),
    )
    n = closing(Notifier(routing, tmp_path / "notify.sqlite", None, Clock()))
    n.submit(book.observe([cond(f"E{i}") for i in range(5)], BASE_MS))
    assert n.tick() == 5 and len(up.accepted) == 5
    stats = n.stats()
    assert stats["retried"] == 1 and stats["pending"] == 5


# -- grouping -------------------------------------------------------------------


def test_a_lot_wide_problem_is_one_notification(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    hook = hooks().start()
    clock = Clock()
    routing = RoutingSettings(
        receivers=(Receiver(name="hook", type="webhook", url=hook.url),),
        routes=(Route(name="lots", lot_prefix="L7", receivers=("hook",), group_window_s=60),),
    )
    n = closing(Notifier(routing, tmp_path / "notify.sqlite", None, clock))
    changes = book.observe([cond(f"M{i:03d}", lot="L7") for i in range(300)], BASE_MS)
    for part in range(3):  # they arrive in three batches inside the window
        n.submit(changes[part * 100 : (part + 1) * 100])
        clock.advance(10)
    assert n.tick() == 0 and hook.requests == [] and n.stats()["buffered"] == 300
    clock.advance(30)  # 60 s after the first change
    assert n.tick() == 1
    [(key, body)] = hook.requests
    assert body["action"] == "opened" and body["route"] == "lots"
    assert [a["id"] for a in body["alerts"]] == sorted(c.alert["id"] for c in changes)
    assert key == idempotency_key("hook", [member_key(c.alert, "opened") for c in changes])

    # The fault clears everywhere: one "resolved" message for all 300.
    resolved = book.observe([], BASE_MS + 3 * DAY_MS)
    assert len(resolved) == 300
    n.submit(resolved)
    clock.advance(60)
    assert n.tick() == 1
    assert [(b["action"], len(b["alerts"])) for _, b in hook.requests] == [
        ("opened", 300), ("resolved", 300),
    ]  # fmt: skip
    assert n.stats()["buffered"] == 0 and n.pending() == 0


def test_group_buffers_and_escalation_timers_survive_a_restart(
    tmp_path: Path, book: AlertBook
) -> None:
    clock = Clock()
    out = Published()
    routing = RoutingSettings(
        receivers=(Receiver(name="m", type="mqtt", topic="a/{action}/{id}"),),
        routes=(
            Route(name="r", receivers=("m",), group_window_s=60, escalate_after_s=600,
                  escalate_to=("m",)),
        ),
    )  # fmt: skip
    path = tmp_path / "notify.sqlite"
    first = Notifier(routing, path, out, clock)
    [opened] = book.observe([cond()], BASE_MS)
    first.submit([opened])
    first.close()

    second = Notifier(routing, path, out, clock)
    clock.advance(60)
    assert second.tick() == 1 and out.topics() == [f"a/opened/{opened.alert['id']}"]
    second.close()
    third = Notifier(routing, path, out, clock)
    clock.advance(600)
    third.tick()  # escalation due: into the group window
    clock.advance(60)
    assert third.tick() == 1
    assert out.topics()[-1] == f"a/escalated/{opened.alert['id']}"
    third.close()


# -- routing --------------------------------------------------------------------


def test_routes_send_each_alert_to_the_receivers_whose_matchers_all_match(
    tmp_path: Path, book: AlertBook, closing: Callable[[Notifier], Notifier]
) -> None:
    names = ("all", "crit", "taxi", "err", "pudong", "lot2024")
    receivers = tuple(Receiver(name=r, type="mqtt", topic=f"{r}/{{meter}}/{{lot}}") for r in names)
    routes = (
        Route(name="all", receivers=("all",)),
        Route(name="crit", severities=("critical",), receivers=("crit",)),
        Route(name="taxi", kinds=("taxi",), receivers=("taxi",)),
        Route(name="err", rules=("elec.error", "taxi.distance"), receivers=("err",)),
        Route(name="pudong", district_prefix="SH-PD", receivers=("pudong",)),
        Route(name="lot2024", lot_prefix="L2024", severities=("major", "critical"),
              receivers=("lot2024",)),
        Route(name="all-again", receivers=("all",)),  # same receiver twice: still one message
    )  # fmt: skip
    out = Published()
    n = closing(
        Notifier(RoutingSettings(receivers=receivers, routes=routes), tmp_path / "n.sqlite", out)
    )
    n.submit(
        book.observe(
            [
                cond("A", "elec.error_limit", "elec", "major", "L2024-3", "SH-PD-01"),
                cond("B", "taxi.fare_drift", "taxi", "critical", None, None),
                cond("C", "elec.clock_offset", "elec", "minor", "L2024-9", "SH-XH-02"),
                cond("L2024-3", "lot.sample_failed", "lot", "critical", "L2024-3", None),
                cond("D", "taxi.distance_ratio", "taxi", "info", None, "SH-PDX"),
            ],
            BASE_MS,
        )
    )
    n.tick()
    got: dict[str, set[str]] = {}
    for topic in out.topics():
        receiver, meter, lot = topic.split("/")
        got.setdefault(receiver, set()).add(meter if meter != "-" else lot)
    assert got == {
        "all": {"A", "B", "C", "L2024-3", "D"},
        "crit": {"B", "L2024-3"},
        "taxi": {"B", "D"},
        "err": {"A", "D"},
        "pudong": {"A", "D"},
        "lot2024": {"A", "L2024-3"},
    }
    assert len(out.topics()) == sum(len(v) for v in got.values())


def test_mqtt_receiver_publishes_contract_shape_and_retries_a_failed_publish(
    tmp_path: Path, book: AlertBook, closing: Callable[[Notifier], Notifier]
) -> None:
    clock = Clock()
    out = Published(fail_first=1)
    n = closing(Notifier(RoutingSettings(), tmp_path / "notify.sqlite", out, clock))
    [opened] = book.observe([cond(severity="critical")], BASE_MS)
    [repeated] = book.observe([cond(severity="critical")], BASE_MS + 1)
    n.submit([opened, repeated])
    assert n.tick() == 0 and n.stats()["retried"] == 1
    clock.advance(1)
    assert n.tick() == 1
    [(topic, payload)] = out.messages
    assert topic == "monitor/alerts/critical/elec"
    assert payload == {**opened.alert, "action": "opened"}
    assert out.retained == [False]  # an alert is an event (docs/mqtt.md): never retained


def test_log_receiver_writes_one_line_per_notification(
    tmp_path: Path,
    book: AlertBook,
    caplog: pytest.LogCaptureFixture,
    closing: Callable[[Notifier], Notifier],
) -> None:
    routing = RoutingSettings(
        receivers=(Receiver(name="audit", type="log"),),
        routes=(Route(name="all", receivers=("audit",), group_window_s=1),),
    )
    clock = Clock()
    n = closing(Notifier(routing, tmp_path / "notify.sqlite", None, clock))
    n.submit(book.observe([cond(f"E{i}") for i in range(7)], BASE_MS))
    clock.advance(1)
    with caplog.at_level(logging.INFO, logger="monitor.notify"):
        assert n.tick() == 1
    [record] = [r for r in caplog.records if r.name == "monitor.notify.audit"]
    assert "alert opened via route all: 7 alert(s)" in record.getMessage()
    assert "(+2 more)" in record.getMessage()


# -- escalation -----------------------------------------------------------------


def escalation_notifier(path: Path, clock: Clock, out: Published) -> Notifier:
    routing = RoutingSettings(
        receivers=(
            Receiver(name="ops", type="mqtt", topic="ops/{action}/{meter}"),
            Receiver(name="oncall", type="mqtt", topic="oncall/{action}/{meter}"),
        ),
        routes=(
            Route(name="crit", severities=("critical",), receivers=("ops",),
                  escalate_after_s=600, escalate_to=("oncall",), remind_every_s=300),
        ),
    )  # fmt: skip
    return Notifier(routing, path, out, clock)


def test_escalation_after_the_limit_then_reminders_until_acknowledged(
    tmp_path: Path, book: AlertBook, closing: Callable[[Notifier], Notifier]
) -> None:
    clock, out = Clock(), Published()
    n = closing(escalation_notifier(tmp_path / "notify.sqlite", clock, out))
    [opened] = book.observe([cond("E1", severity="critical")], BASE_MS)
    n.submit([opened])
    n.tick()
    assert out.topics() == ["ops/opened/E1"]

    def step(seconds: float) -> list[str]:
        before = len(out.messages)
        clock.advance(seconds)
        n.tick()
        return out.topics()[before:]

    assert step(599) == []
    assert step(1) == ["oncall/escalated/E1"]
    assert step(299) == []
    assert step(1) == ["oncall/reminded/E1"]
    assert step(300) == ["oncall/reminded/E1"]
    # Still firing: the evaluator's `repeated` changes keep what escalation sends current.
    [repeated] = book.observe([cond("E1", severity="critical")], BASE_MS + 1000)
    n.submit([repeated])
    assert step(300) == ["oncall/reminded/E1"]
    assert out.messages[-1][1]["count"] == 2

    acked = book.act(opened.alert["id"], "ack", "ops", "on it", BASE_MS + 3_600_000)
    n.submit([acked])
    assert step(1) == ["ops/acknowledged/E1", "oncall/acknowledged/E1"]  # the all-clear
    assert step(300) == [] and step(3000) == []
    stats = n.stats()
    assert stats["escalated"] == 1 and stats["reminded"] == 3


def test_no_escalation_when_handled_in_time_and_a_reopen_rearms(
    tmp_path: Path, book: AlertBook, closing: Callable[[Notifier], Notifier]
) -> None:
    clock, out = Clock(), Published()
    n = closing(escalation_notifier(tmp_path / "notify.sqlite", clock, out))
    [opened] = book.observe([cond("E1", severity="critical")], BASE_MS)
    n.submit([opened])
    clock.advance(300)
    n.submit([book.act(opened.alert["id"], "resolve", "ops", "fixed", None)])
    clock.advance(3600)
    n.tick()
    assert out.topics() == ["ops/opened/E1", "ops/resolved/E1"]  # oncall never paged

    [reopened] = book.observe([cond("E1", severity="critical")], BASE_MS + DAY_MS)
    assert reopened.action == "reopened"
    n.submit([reopened])
    clock.advance(600)
    n.tick()
    assert out.topics()[-2:] == ["ops/reopened/E1", "oncall/escalated/E1"]
    # An acknowledgement that only shows in a `repeated` change also stops reminders.
    book.act(opened.alert["id"], "ack", "ops", "seen", None)
    n.submit(book.observe([cond("E1", severity="critical")], BASE_MS + DAY_MS + 1))
    clock.advance(3600)
    n.tick()
    assert out.topics()[-1] == "oncall/escalated/E1"


def test_submit_and_tick_from_two_threads_deliver_each_change_once(
    tmp_path: Path,
    book: AlertBook,
    hooks: Callable[..., Hook],
    closing: Callable[[Notifier], Notifier],
) -> None:
    hook = hooks().start()
    n = closing(Notifier(webhook_routing(hook.url), tmp_path / "notify.sqlite", None, Clock()))
    changes = book.observe([cond(f"E{i}") for i in range(200)], BASE_MS)
    done = threading.Event()

    def submitter() -> None:
        for i in range(0, 200, 10):
            n.submit(changes[i : i + 10])
        done.set()

    thread = threading.Thread(target=submitter)
    thread.start()
    delivered = 0
    while not done.is_set() or n.pending():
        delivered += n.tick()
    thread.join()
    assert delivered == 200 and len(hook.accepted) == len(set(hook.accepted)) == 200


def test_close_is_idempotent_and_later_ticks_are_harmless(tmp_path: Path) -> None:
    n = Notifier(RoutingSettings(), tmp_path / "notify.sqlite", Published())
    n.close()
    n.close()
    assert n.tick() == 0
