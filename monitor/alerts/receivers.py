"""Where notifications go: one class per receiver type (MQTT, webhook, log), one seam.

    receiver = make_receiver(settings, publish=worker.publish, http=httpx.Client())
    outcome = receiver.deliver(notification)   # done, retry later, or failed for good

A receiver never raises for a delivery that went wrong: it says so in its `Outcome`,
and the notifier retries or gives up by the receiver's settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from monitor.alerts.outbox import Notification, compact_json
from monitor.alerts.routing import Receiver, topic_for
from monitor.core.ports import Publisher

# The log receiver writes on `monitor.notify.<receiver name>`: the name operators
# configure their log handlers with, kept when the module moved.
LOG_LOGGER = "monitor.notify"


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


class Delivery(Protocol):
    """One configured receiver: hands a notification on and says how it went."""

    def deliver(self, row: Notification) -> Outcome: ...


class MqttReceiver:
    """Publishes each alert of a notification on the receiver's topic template."""

    def __init__(self, settings: Receiver, publish: Publisher) -> None:
        self._settings = settings
        self._publish = publish

    def deliver(self, row: Notification) -> Outcome:
        # The alert topic carries one alert JSON per message, so a group is published
        # alert by alert; the outbox row still succeeds or retries as a whole (a retry
        # may repeat some messages: at least once).
        try:
            for alert in row.alerts:
                payload = compact_json({**alert, "action": row.action}).encode()
                # Not retained: an alert is an event; its current state is in the API.
                self._publish(topic_for(self._settings.topic, alert, row.action), payload, False)
        except Exception as exc:  # whatever a publish callable raises: retry, never crash
            return Outcome("retry", f"{type(exc).__name__}: {exc}")
        return DONE


class WebhookReceiver:
    """POSTs the notification as JSON with its idempotency key (body and header)."""

    def __init__(self, settings: Receiver, http: httpx.Client) -> None:
        assert settings.url is not None  # the settings model requires it for a webhook
        self._settings = settings
        self._url = settings.url
        self._http = http

    def deliver(self, row: Notification) -> Outcome:
        body = {
            "idempotency_key": row.key,
            "action": row.action,
            "alerts": row.alerts,
            "receiver": row.receiver,
            "route": row.route,
        }
        headers = {
            **self._settings.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": row.key,
        }
        try:
            resp = self._http.post(
                self._url,
                content=compact_json(body),
                headers=headers,
                timeout=self._settings.timeout_s,
            )
        except httpx.HTTPError as exc:
            return Outcome("retry", f"{type(exc).__name__}: {exc}")
        return judge_response(resp.status_code, resp.headers.get("Retry-After"))


class LogReceiver:
    """One log line per notification (a group too), on `monitor.notify.<receiver>`."""

    def __init__(self, settings: Receiver) -> None:
        self._log = logging.getLogger(f"{LOG_LOGGER}.{settings.name}")

    def deliver(self, row: Notification) -> Outcome:
        shown = "; ".join(str(a.get("message", a.get("id"))) for a in row.alerts[:5])
        more = f" (+{len(row.alerts) - 5} more)" if len(row.alerts) > 5 else ""
        level = logging.INFO if row.action in ("resolved", "acknowledged") else logging.WARNING
        self._log.log(
            level,
            "alert %s via route %s: %d alert(s): %s%s",
            row.action,
            row.route,
            len(row.alerts),
            shown,
            more,
        )
        return DONE


def make_receiver(
    settings: Receiver, publish: Publisher | None, http: httpx.Client | None
) -> Delivery:
    """The receiver for one `alerts.routing.receivers` entry."""
    if settings.type == "mqtt":
        if publish is None:
            raise ValueError("an mqtt receiver is configured but no publish callable was given")
        return MqttReceiver(settings, publish)
    if settings.type == "webhook":
        if http is None:
            raise ValueError(f"webhook receiver {settings.name!r} needs an HTTP client")
        return WebhookReceiver(settings, http)
    return LogReceiver(settings)
