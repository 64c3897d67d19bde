"""Alert routing and delivery: who hears of an alert change, delivered at least once.

    notifier = Notifier(settings.alerts.routing, data_dir / "notify.sqlite", worker.publish)
    notifier.submit(changes)   # the `Change`s of AlertBook.observe / AlertBook.act
    notifier.tick()            # every few seconds: groups, escalations, deliveries

Routes match an alert (severity, kind, rule prefix, district/lot prefix) and name
receivers (MQTT topic, webhook, log). Every notification is first written to a
SQLite outbox under a stable idempotency key and delivered from there, so a
crash or a dead receiver loses nothing and a restart re-sends nothing already
delivered. A route with a group window collects the changes of the window into
one notification per receiver: a lot-wide fault over hundreds of meters is one
message, not hundreds.

Escalation follows the change stream, not a poll of the alert book: an
`opened`/`reopened` change arms it for every matching route with
`escalate_after_s`; any later change whose alert is no longer `open`
(acknowledged, resolved, or even a `repeated` of an acknowledged alert)
disarms it. So whatever acknowledges or resolves an alert must `submit` its
`Change`; people who were paged get that change too (the all-clear). The
outbox, group buffers and escalation timers live in the database, so all of
them survive a restart. All time comes from the injected clock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # only a type here: config.py can import the settings models cheaply
    from monitor.alerts.book import Change

log = logging.getLogger(__name__)

Severity = Literal["critical", "major", "minor", "info"]
AlertKind = Literal["elec", "taxi", "lot", "district"]

DEFAULT_TOPIC = "monitor/alerts/{severity}/{kind}"  # docs/mqtt.md
# Actions that reach receivers; `repeated` only refreshes what escalation will send.
ROUTED_ACTIONS = frozenset({"opened", "reopened", "resolved", "acknowledged"})
TOPIC_FIELDS = frozenset({"severity", "kind", "rule", "meter", "lot", "district", "id", "action"})
_NAME = r"^[A-Za-z0-9_.-]+$"
# Rows delivered per tick: bounds how long one tick holds a scheduler thread when a
# receiver is slow; the rest are due at the next tick.
_BATCH = 200
# Finished rows are pruned at most this often (a DELETE scan is cheap but not free).
_PRUNE_EVERY_S = 3600.0


# -- settings -------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Fields that only make sense for one receiver type: setting them on another is a mistake.
_ONLY_FOR: dict[str, tuple[str, ...]] = {
    "mqtt": ("topic",),
    "webhook": ("url", "headers", "timeout_s"),
    "log": (),
}


class Receiver(_Section):
    """Somewhere notifications go: an MQTT topic, a webhook, or the service log.

    Retry settings apply to every type (a publish callable can fail too).
    """

    name: str = Field(pattern=_NAME)
    type: Literal["mqtt", "webhook", "log"]
    topic: str = Field(
        DEFAULT_TOPIC, description=f"mqtt: topic template, fields {sorted(TOPIC_FIELDS)}"
    )
    url: str | None = Field(None, description="webhook: http(s) URL receiving a JSON POST")
    headers: dict[str, str] = Field(default_factory=dict, description="webhook: extra headers")
    timeout_s: float = Field(10.0, gt=0, description="webhook: per request")
    max_attempts: int | None = Field(
        None,
        ge=1,
        description="give up after this many failed attempts; null: never (at least once)",
    )
    backoff_s: float = Field(1.0, gt=0, description="first retry delay, doubled per failure")
    backoff_max_s: float = Field(300.0, gt=0, description="ceiling of the retry delay")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return check_topic_template(value)

    @model_validator(mode="after")
    def _fits_type(self) -> Receiver:
        others = {f for kind, fields in _ONLY_FOR.items() if kind != self.type for f in fields}
        misplaced = sorted(others & self.model_fields_set)
        if misplaced:
            raise ValueError(f"receiver {self.name!r} ({self.type}) does not take {misplaced}")
        bad_url = not self.url or urlsplit(self.url).scheme not in ("http", "https")
        if self.type == "webhook" and bad_url:
            raise ValueError(f"webhook receiver {self.name!r} needs an http(s) url")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(f"receiver {self.name!r}: backoff_max_s is below backoff_s")
        return self


class Route(_Section):
    """Which alerts go where. Every matcher that is set must match; unset ones match all."""

    name: str = Field(pattern=_NAME)
    severities: tuple[Severity, ...] = ()
    kinds: tuple[AlertKind, ...] = ()
    rules: tuple[str, ...] = Field((), description="rule name prefixes, e.g. elec.error")
    district_prefix: str | None = None
    lot_prefix: str | None = None
    receivers: tuple[str, ...] = Field(min_length=1)
    group_window_s: float = Field(
        0.0, ge=0, description="collect changes this long into one notification; 0: none"
    )
    escalate_after_s: float | None = Field(
        None, gt=0, description="still open this long after notification: tell escalate_to"
    )
    escalate_to: tuple[str, ...] = ()
    remind_every_s: float | None = Field(
        None, gt=0, description="after escalating, remind escalate_to this often until handled"
    )

    @model_validator(mode="after")
    def _escalation(self) -> Route:
        if self.escalate_after_s is None:
            if self.escalate_to or self.remind_every_s is not None:
                raise ValueError(
                    f"route {self.name!r}: escalate_to/remind_every_s need escalate_after_s"
                )
            return self
        if not self.escalate_to:
            raise ValueError(f"route {self.name!r}: escalate_after_s needs escalate_to")
        # Escalating before the grouped first notification went out would page people
        # about something nobody was told of yet.
        if self.escalate_after_s <= self.group_window_s:
            raise ValueError(f"route {self.name!r}: escalate_after_s must exceed group_window_s")
        return self

    def matches(self, alert: dict[str, Any]) -> bool:
        """Whether this route takes the alert."""
        return (
            (not self.severities or alert.get("severity") in self.severities)
            and (not self.kinds or alert.get("kind") in self.kinds)
            and (not self.rules or str(alert.get("rule", "")).startswith(self.rules))
            and _has_prefix(alert.get("district"), self.district_prefix)
            and _has_prefix(alert.get("lot"), self.lot_prefix)
        )


def _has_prefix(value: Any, prefix: str | None) -> bool:
    return prefix is None or (value is not None and str(value).startswith(prefix))


class RoutingSettings(_Section):
    """Receivers and routes (`alerts.routing` in monitor.yaml).

    The default publishes every change on the contract's alert topic, as before routing.
    """

    receivers: tuple[Receiver, ...] = (Receiver(name="mqtt", type="mqtt"),)
    routes: tuple[Route, ...] = (Route(name="all", receivers=("mqtt",)),)
    keep_finished_s: float = Field(
        7 * 86400.0, gt=0, description="how long delivered/failed outbox rows stay (dedup)"
    )

    @model_validator(mode="after")
    def _names(self) -> RoutingSettings:
        _unique("receiver", [r.name for r in self.receivers])
        _unique("route", [r.name for r in self.routes])
        defined = {r.name for r in self.receivers}
        for route in self.routes:
            unknown = sorted({*route.receivers, *route.escalate_to} - defined)
            if unknown:
                raise ValueError(
                    f"route {route.name!r} names undefined receiver(s) {unknown}; "
                    f"defined: {sorted(defined)}"
                )
        return self


def _unique(what: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique: {dupes}")


def check_topic_template(template: str) -> str:
    """A topic template with only known `{fields}` and no MQTT wildcards."""
    for literal, field, spec, conv in string.Formatter().parse(template):
        if "+" in literal or "#" in literal:
            raise ValueError(f"topic {template!r} contains a wildcard")
        if field is not None and (field not in TOPIC_FIELDS or spec or conv):
            raise ValueError(
                f"topic {template!r}: unknown field {{{field}}}; use {sorted(TOPIC_FIELDS)}"
            )
    if not template or template.startswith("/"):
        raise ValueError(f"topic {template!r} must be non-empty and not start with /")
    return template


# -- pure helpers ---------------------------------------------------------------


def member_key(alert: dict[str, Any], action: str) -> str:
    """What makes one alert's change distinct: id, action and the alert's count/last_seen."""
    return f"{alert['id']}|{action}|{alert['count']}|{alert['last_seen']}"


def idempotency_key(receiver: str, members: Iterable[str]) -> str:
    """sha256 of the receiver and the sorted member keys (one member: a single alert)."""
    return hashlib.sha256("\n".join([receiver, *sorted(members)]).encode()).hexdigest()


def topic_for(template: str, alert: dict[str, Any], action: str) -> str:
    """The MQTT topic of one alert; absent fields become `-`."""
    values = {f: _topic_part(alert.get(f)) for f in TOPIC_FIELDS - {"action"}}
    return template.format(**values, action=action)


def _topic_part(value: Any) -> str:
    # A value must stay one topic level and never turn into a wildcard.
    text = "-" if value is None else str(value)
    return text.replace("/", "_").replace("+", "_").replace("#", "_")


def retry_delay_s(receiver: Receiver, failures: int, retry_after_s: float | None) -> float:
    """Exponential backoff after `failures` failed attempts; a server's Retry-After wins
    when longer, within the ceiling."""
    delay = receiver.backoff_s * 2.0 ** min(failures - 1, 62)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, receiver.backoff_max_s)


@dataclass(frozen=True)
class Outcome:
    """How one delivery attempt ended: `done`, `retry` later, or `failed` for good."""

    kind: Literal["done", "retry", "failed"]
    detail: str = ""
    retry_after_s: float | None = None


DONE = Outcome("done")


def judge_response(status: int, retry_after: str | None) -> Outcome:
    """2xx delivered; 4xx other than 408/429 will never succeed; anything else retries."""
    if 200 <= status < 300:
        return DONE
    if 400 <= status < 500 and status not in (408, 429):
        return Outcome("failed", f"HTTP {status}")
    return Outcome("retry", f"HTTP {status}", _seconds(retry_after))


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:  # an HTTP-date: rare for webhooks, plain backoff is fine
        return None


# -- the SQLite outbox ----------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notify_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
        receiver TEXT NOT NULL, route TEXT NOT NULL, action TEXT NOT NULL,
        alerts TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
        created_at REAL NOT NULL, finished_at REAL, last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS notify_outbox_due ON notify_outbox (state, next_at)",
    """CREATE TABLE IF NOT EXISTS notify_grouped (
        route TEXT NOT NULL, receiver TEXT NOT NULL, action TEXT NOT NULL,
        alert_id INTEGER NOT NULL, member TEXT NOT NULL, alert TEXT NOT NULL,
        at REAL NOT NULL, PRIMARY KEY (route, receiver, action, alert_id))""",
    """CREATE TABLE IF NOT EXISTS notify_escalations (
        route TEXT NOT NULL, alert_id INTEGER NOT NULL, armed TEXT NOT NULL,
        alert TEXT NOT NULL, due_at REAL, step INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (route, alert_id))""",
    # Every submitted change looks its alert up here (refresh, disarm).
    "CREATE INDEX IF NOT EXISTS notify_escalations_alert ON notify_escalations (alert_id)",
)


@dataclass(frozen=True)
class Notification:
    """One message to one receiver: one alert, or a group of alerts with one action."""

    key: str
    receiver: str
    route: str
    action: str
    alerts: list[dict[str, Any]]
    id: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class Escalation:
    """An armed escalation timer: `step` 0 escalates, later steps remind."""

    route: str
    alert: dict[str, Any]
    armed: str
    step: int


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Outbox:
    """The notifier's tables in a SQLite file (WAL); callers serialise access.

    Every method but `transaction` runs inside the caller's transaction or autocommits.
    """

    def __init__(self, path: Path) -> None:
        # `timeout`: the file may be shared with other writers (state.sqlite); wait, don't fail.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a process crash (our restart case); like the alert book,
        # a power cut may lose the last commits of both together.
        self._db.execute("PRAGMA synchronous=NORMAL")
        for sql in _SCHEMA:
            self._db.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add(self, n: Notification, now: float) -> None:
        """Queue a notification; a key already queued or delivered is ignored (dedup)."""
        self._db.execute(
            "INSERT OR IGNORE INTO notify_outbox (key, receiver, route, action, alerts, "
            "next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (n.key, n.receiver, n.route, n.action, _dumps(n.alerts), now, now),
        )

    def due(self, now: float, limit: int) -> list[Notification]:
        """Pending notifications whose next attempt is due, oldest first."""
        rows = self._db.execute(
            "SELECT id, key, receiver, route, action, alerts, attempts FROM notify_outbox "
            "WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [
            Notification(key, rcv, route, action, json.loads(alerts), rid, attempts)
            for rid, key, rcv, route, action, alerts, attempts in rows
        ]

    def finish(self, row_id: int, state: str, now: float, error: str = "") -> None:
        """Mark a row `done` or `failed` (kept until pruned, so its key stays deduplicated)."""
        self._db.execute(
            "UPDATE notify_outbox SET state = ?, finished_at = ?, attempts = attempts + 1, "
            "last_error = ? WHERE id = ?",
            (state, now, error or None, row_id),
        )

    def postpone(self, row_id: int, next_at: float, error: str) -> None:
        """Count a failed attempt and schedule the next one."""
        self._db.execute(
            "UPDATE notify_outbox SET attempts = attempts + 1, next_at = ?, last_error = ? "
            "WHERE id = ?",
            (next_at, error, row_id),
        )

    def pending(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM notify_outbox WHERE state = 'pending'"
            ).fetchone()[0]
        )

    def prune(self, before: float) -> None:
        self._db.execute(
            "DELETE FROM notify_outbox WHERE state != 'pending' AND finished_at < ?", (before,)
        )

    # group buffers

    def buffer(
        self, route: str, receiver: str, action: str, alert: dict[str, Any], member: str, now: float
    ) -> None:
        """Hold an alert for a grouped notification; a later change of it replaces its entry
        but keeps the group's window start."""
        self._db.execute(
            "INSERT INTO notify_grouped (route, receiver, action, alert_id, member, alert, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route, receiver, action, alert_id) "
            "DO UPDATE SET member = excluded.member, "
            "alert = excluded.alert",
            (route, receiver, action, alert["id"], member, _dumps(alert), now),
        )

    def groups(self) -> list[tuple[str, str, str, float]]:
        """(route, receiver, action, window start) of every open group."""
        return [
            (r, rc, a, float(at))
            for r, rc, a, at in self._db.execute(
                "SELECT route, receiver, action, min(at) FROM notify_grouped GROUP BY 1, 2, 3"
            )
        ]

    def take_group(
        self, route: str, receiver: str, action: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """Remove and return a group's (member key, alert), by alert id."""
        where = "route = ? AND receiver = ? AND action = ?"
        args = (route, receiver, action)
        rows = self._db.execute(
            f"SELECT member, alert FROM notify_grouped WHERE {where} ORDER BY alert_id", args
        ).fetchall()
        self._db.execute(f"DELETE FROM notify_grouped WHERE {where}", args)
        return [(m, json.loads(a)) for m, a in rows]

    def buffered(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM notify_grouped").fetchone()[0])

    # escalation timers

    def arm(self, route: str, alert: dict[str, Any], due_at: float) -> None:
        """Start a timer; re-submitting the same opening keeps the running one."""
        armed = f"{alert['count']}|{alert['last_seen']}"
        self._db.execute(
            "INSERT INTO notify_escalations (route, alert_id, armed, alert, due_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (route, alert_id) DO UPDATE SET "
            "armed = excluded.armed, alert = excluded.alert, due_at = excluded.due_at, "
            "step = 0 WHERE armed != excluded.armed",
            (route, alert["id"], armed, _dumps(alert), due_at),
        )

    def refresh(self, alert: dict[str, Any]) -> None:
        """Let escalations carry the alert as it is now (count, last_seen, evidence)."""
        self._db.execute(
            "UPDATE notify_escalations SET alert = ? WHERE alert_id = ?",
            (_dumps(alert), alert["id"]),
        )

    def disarm(self, alert_id: int) -> list[tuple[str, int]]:
        """Stop an alert's timers; returns (route, steps already sent) of each."""
        rows = self._db.execute(
            "SELECT route, step FROM notify_escalations WHERE alert_id = ?", (alert_id,)
        ).fetchall()
        self._db.execute("DELETE FROM notify_escalations WHERE alert_id = ?", (alert_id,))
        return [(r, int(s)) for r, s in rows]

    def due_escalations(self, now: float) -> list[Escalation]:
        rows = self._db.execute(
            "SELECT route, alert, armed, step FROM notify_escalations "
            "WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at",
            (now,),
        ).fetchall()
        return [Escalation(r, json.loads(a), armed, int(s)) for r, a, armed, s in rows]

    def advance(self, route: str, alert_id: int, due_at: float | None) -> None:
        """One step sent; the next is due at `due_at` (None: none, but stay armed so the
        acknowledgement still reaches the people escalated to)."""
        self._db.execute(
            "UPDATE notify_escalations SET step = step + 1, due_at = ? "
            "WHERE route = ? AND alert_id = ?",
            (due_at, route, alert_id),
        )

    def drop_escalation(self, route: str, alert_id: int) -> None:
        self._db.execute(
            "DELETE FROM notify_escalations WHERE route = ? AND alert_id = ?", (route, alert_id)
        )

    def close(self) -> None:
        self._db.close()


# -- the notifier ---------------------------------------------------------------


class Notifier:
    """Routes alert changes to receivers and delivers them at least once from an outbox.

        notifier = Notifier(routing, Path("data/notify.sqlite"), publish=worker.publish)
        notifier.submit(book.observe(conditions, at_ms))
        delivered = notifier.tick()   # from the scheduler, every few seconds

    `publish(topic, payload)` must raise when it could not hand the message on; the
    row is then retried. It is required when a receiver is of type mqtt.
    """

    def __init__(
        self,
        routing: RoutingSettings,
        outbox_path: Path,
        publish: Callable[[str, bytes], None] | None,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
    ) -> None:
        self._receivers = {r.name: r for r in routing.receivers}
        self._routes = {r.name: r for r in routing.routes}
        self._keep_s = routing.keep_finished_s
        if publish is None and any(r.type == "mqtt" for r in routing.receivers):
            raise ValueError("an mqtt receiver is configured but no publish callable was given")
        self._publish = publish
        self._clock = clock
        needs_http = any(r.type == "webhook" for r in routing.receivers)
        self._own_http = http is None and needs_http
        self._http = httpx.Client() if self._own_http else http
        self._box = Outbox(outbox_path)
        self._lock = threading.Lock()  # one SQLite connection: one user at a time
        # One tick at a time, so a row is never in two deliveries at once.
        self._ticking = threading.Lock()
        self._pruned_at = float("-inf")
        self._closed = False
        self._counts = dict.fromkeys(("delivered", "failed", "retried", "escalated", "reminded"), 0)

    # submit

    def submit(self, changes: Iterable[Change]) -> None:
        """Route changes into the outbox (or a group buffer), and follow escalations.

        `repeated` changes reach no receiver; passing them is still useful: they keep
        escalation content current and a non-open one stops its escalation.
        """
        now = self._clock()
        with self._lock, self._box.transaction():
            for change in changes:
                if change.action in ROUTED_ACTIONS:
                    self._route(change.action, change.alert, now)
                self._follow_escalation(change, now)

    def _route(self, action: str, alert: dict[str, Any], now: float) -> None:
        member = member_key(alert, action)
        for route in self._routes.values():
            if route.matches(alert):
                self._enqueue(route, route.receivers, action, alert, member, now)

    def _enqueue(
        self,
        route: Route,
        receivers: Iterable[str],
        action: str,
        alert: dict[str, Any],
        member: str,
        now: float,
    ) -> None:
        for name in receivers:
            if route.group_window_s > 0:
                self._box.buffer(route.name, name, action, alert, member, now)
            else:
                key = idempotency_key(name, [member])
                self._box.add(Notification(key, name, route.name, action, [alert]), now)

    def _follow_escalation(self, change: Change, now: float) -> None:
        alert = change.alert
        if alert.get("status") != "open":
            self._stand_down(change, now)
        elif change.action in ("opened", "reopened"):
            for route in self._routes.values():
                if route.escalate_after_s is not None and route.matches(alert):
                    self._box.arm(route.name, alert, now + route.escalate_after_s)
        else:
            self._box.refresh(alert)

    def _stand_down(self, change: Change, now: float) -> None:
        """Disarm; people already escalated to hear the acknowledgement or resolution."""
        for route_name, sent in self._box.disarm(change.alert["id"]):
            route = self._routes.get(route_name)
            if route is not None and sent > 0 and change.action in ROUTED_ACTIONS:
                member = member_key(change.alert, change.action)
                self._enqueue(route, route.escalate_to, change.action, change.alert, member, now)

    # tick

    def tick(self) -> int:
        """Escalate, flush due groups, deliver due rows; returns deliveries that succeeded.

        Returns 0 at once when another tick is still running.
        """
        if not self._ticking.acquire(blocking=False):
            return 0
        try:
            now = self._clock()
            with self._lock, self._box.transaction():
                self._escalate(now)
                self._flush_groups(now)
            delivered = self._deliver_due(now)
            self._prune(now)
            return delivered
        finally:
            self._ticking.release()

    def _escalate(self, now: float) -> None:
        for esc in self._box.due_escalations(now):
            route = self._routes.get(esc.route)
            if route is None or route.escalate_after_s is None:  # route removed since armed
                self._box.drop_escalation(esc.route, esc.alert["id"])
                continue
            action = "escalated" if esc.step == 0 else "reminded"
            member = f"{esc.alert['id']}|{action}|{esc.armed}|{esc.step}"
            self._enqueue(route, route.escalate_to, action, esc.alert, member, now)
            again = None if route.remind_every_s is None else now + route.remind_every_s
            self._box.advance(route.name, esc.alert["id"], again)
            self._counts[action] += 1

    def _flush_groups(self, now: float) -> None:
        for route_name, receiver, action, start in self._box.groups():
            route = self._routes.get(route_name)
            # A route removed since buffering has no window any more: send what it held.
            window = route.group_window_s if route is not None else 0.0
            if start + window > now:
                continue
            members = self._box.take_group(route_name, receiver, action)
            key = idempotency_key(receiver, [m for m, _ in members])
            alerts = [a for _, a in members]
            self._box.add(Notification(key, receiver, route_name, action, alerts), now)

    def _deliver_due(self, now: float) -> int:
        with self._lock:
            rows = self._box.due(now, _BATCH)
        down: set[str] = set()
        delivered = 0
        for row in rows:
            # After one failure, leave a receiver's other rows for later: a dead endpoint
            # costs one timeout per tick, not one per queued row.
            if row.receiver in down:
                continue
            outcome = self._attempt(row)
            with self._lock:
                self._settle(row, outcome)
            if outcome.kind == "retry":
                down.add(row.receiver)
            delivered += outcome.kind == "done"
        return delivered

    def _attempt(self, row: Notification) -> Outcome:
        receiver = self._receivers.get(row.receiver)
        if receiver is None:
            return Outcome("failed", f"receiver {row.receiver!r} is no longer configured")
        try:
            if receiver.type == "webhook":
                return self._post(receiver, row)
            if receiver.type == "mqtt":
                self._publish_each(receiver, row)
            else:
                _log_notification(receiver, row)
            return DONE
        except Exception as exc:  # whatever a publish callable raises: retry, never crash the tick
            return Outcome("retry", f"{type(exc).__name__}: {exc}")

    def _post(self, receiver: Receiver, row: Notification) -> Outcome:
        assert self._http is not None and receiver.url is not None  # by construction
        body = {
            "idempotency_key": row.key,
            "action": row.action,
            "alerts": row.alerts,
            "receiver": row.receiver,
            "route": row.route,
        }
        headers = {
            **receiver.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": row.key,
        }
        try:
            resp = self._http.post(
                receiver.url, content=_dumps(body), headers=headers, timeout=receiver.timeout_s
            )
        except httpx.HTTPError as exc:
            return Outcome("retry", f"{type(exc).__name__}: {exc}")
        return judge_response(resp.status_code, resp.headers.get("Retry-After"))

    def _publish_each(self, receiver: Receiver, row: Notification) -> None:
        # The contract's alert topic carries one alert JSON per message (docs/mqtt.md),
        # so a group is published alert by alert; the outbox row still succeeds or
        # retries as a whole (a retry may repeat some messages: at least once).
        assert self._publish is not None  # checked in __init__
        for alert in row.alerts:
            payload = _dumps({**alert, "action": row.action}).encode()
            self._publish(topic_for(receiver.topic, alert, row.action), payload)

    def _settle(self, row: Notification, outcome: Outcome) -> None:
        now = self._clock()
        receiver = self._receivers.get(row.receiver)
        failures = row.attempts + 1
        if outcome.kind == "retry" and receiver is not None:
            if receiver.max_attempts is None or failures < receiver.max_attempts:
                delay = retry_delay_s(receiver, failures, outcome.retry_after_s)
                self._box.postpone(row.id, now + delay, outcome.detail)
                self._counts["retried"] += 1
                log.warning(
                    "notification %s to %s failed (%s), attempt %d; retry in %.0fs",
                    row.key[:12],
                    row.receiver,
                    outcome.detail,
                    failures,
                    delay,
                )
                return
            outcome = Outcome("failed", f"{outcome.detail}; gave up after {failures} attempts")
        if outcome.kind == "done":
            self._box.finish(row.id, "done", now)
            self._counts["delivered"] += 1
            return
        self._box.finish(row.id, "failed", now, outcome.detail)
        self._counts["failed"] += 1
        log.error(
            "notification %s to %s failed for good: %s", row.key[:12], row.receiver, outcome.detail
        )

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = now
        with self._lock:
            self._box.prune(now - self._keep_s)

    # introspection

    def pending(self) -> int:
        """Outbox rows not yet delivered or given up (grouped alerts not yet flushed excluded)."""
        with self._lock:
            return self._box.pending()

    def stats(self) -> dict[str, int]:
        """Counters since this process started, plus `pending` and `buffered` (in windows)."""
        with self._lock:
            return {
                **self._counts,
                "pending": self._box.pending(),
                "buffered": self._box.buffered(),
            }

    def close(self) -> None:
        """Wait for a running tick, then close the outbox (and the HTTP client when it is
        ours). Later ticks return 0; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        # Held for good: a scheduler still firing after shutdown(wait=False) finds the tick
        # "running" and returns instead of touching a closed database.
        self._ticking.acquire()
        with self._lock:
            self._box.close()
        if self._own_http and self._http is not None:
            self._http.close()


def _log_notification(receiver: Receiver, row: Notification) -> None:
    """One log line per notification (a group too), on `monitor.alerts.notify.<receiver>`."""
    shown = "; ".join(str(a.get("message", a.get("id"))) for a in row.alerts[:5])
    more = f" (+{len(row.alerts) - 5} more)" if len(row.alerts) > 5 else ""
    level = logging.INFO if row.action in ("resolved", "acknowledged") else logging.WARNING
    logging.getLogger(f"{__name__}.{receiver.name}").log(
        level,
        "alert %s via route %s: %d alert(s): %s%s",
        row.action,
        row.route,
        len(row.alerts),
        shown,
        more,
    )
