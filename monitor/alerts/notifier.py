"""Alert delivery: who hears of an alert change, delivered at least once.

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

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from monitor.alerts.outbox import Notification, Outbox
from monitor.alerts.receivers import Outcome, make_receiver, retry_delay_s
from monitor.alerts.routing import (
    ROUTED_ACTIONS,
    Route,
    RoutingSettings,
    idempotency_key,
    member_key,
)
from monitor.core.ports import Publisher

if TYPE_CHECKING:
    from monitor.alerts.book import Change

log = logging.getLogger(__name__)


# Rows delivered per tick: bounds how long one tick holds a scheduler thread when a
# receiver is slow; the rest are due at the next tick.
_BATCH = 200
# Finished rows are pruned at most this often (a DELETE scan is cheap but not free).
_PRUNE_EVERY_S = 3600.0


class Notifier:
    """Routes alert changes to receivers and delivers them at least once from an outbox.

        notifier = Notifier(routing, Path("data/notify.sqlite"), publish=worker.publish)
        notifier.submit(book.observe(conditions, at_ms))
        delivered = notifier.tick()   # from the scheduler, every few seconds

    `publish(topic, payload, retain)` must raise when it could not hand the message on; the
    row is then retried. It is required when a receiver is of type mqtt.
    """

    def __init__(
        self,
        routing: RoutingSettings,
        outbox_path: Path,
        publish: Publisher | None,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
    ) -> None:
        self._receivers = {r.name: r for r in routing.receivers}
        self._routes = {r.name: r for r in routing.routes}
        self._keep_s = routing.keep_finished_s
        self._clock = clock
        needs_http = any(r.type == "webhook" for r in routing.receivers)
        self._own_http = http is None and needs_http
        self._http = httpx.Client() if self._own_http else http
        self._deliveries = {
            r.name: make_receiver(r, publish, self._http) for r in routing.receivers
        }
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
        delivery = self._deliveries.get(row.receiver)
        if delivery is None:
            return Outcome("failed", f"receiver {row.receiver!r} is no longer configured")
        return delivery.deliver(row)

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
