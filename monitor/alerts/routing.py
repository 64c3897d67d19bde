"""Alert routing: receivers and routes (`alerts.routing` in monitor.yaml), topics and keys.

Routes match an alert (severity, kind, rule prefix, district/lot prefix) and name
receivers (MQTT topic, webhook, log). Every notification carries a stable
idempotency key, so a receiver can drop a redelivered one.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Severity = Literal["critical", "major", "minor", "info"]
AlertKind = Literal["elec", "taxi", "lot", "district"]

DEFAULT_TOPIC = "monitor/alerts/{severity}/{kind}"  # docs/mqtt.md
# Actions that reach receivers; `repeated` only refreshes what escalation will send.
ROUTED_ACTIONS = frozenset({"opened", "reopened", "resolved", "acknowledged"})
TOPIC_FIELDS = frozenset({"severity", "kind", "rule", "meter", "lot", "district", "id", "action"})
_NAME = r"^[A-Za-z0-9_.-]+$"


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
