"""Tariff rollout progress: which meters applied a pushed tariff, which are overdue.

A meter has applied version V when it reports a `tariff_applied` event naming V
or a heartbeat whose `tariff_version` is V. Overdue is judged at `as_of`
(event time) against the rollout's deadline, never against the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from monitor.core.clock import format_ts
from monitor.core.ports import MeterPoint

Progress = Literal["pending", "applied", "overdue"]


@dataclass(frozen=True)
class Rollout:
    """A pushed tariff: version, when it takes effect, by when meters must apply it."""

    version: str
    effective_from_ms: int
    deadline_ms: int
    meters: list[str]


@dataclass(frozen=True)
class MeterProgress:
    """Where one meter stands in a rollout."""

    meter: str
    status: Progress
    applied_at_ms: int | None = None
    evidence: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "status": self.status,
            "applied_at": format_ts(self.applied_at_ms) if self.applied_at_ms else None,
            "evidence": self.evidence,
        }


def applied_at(
    version: str, events: Iterable[MeterPoint], heartbeats: Iterable[MeterPoint]
) -> dict[str, tuple[int, str]]:
    """First time each meter showed `version`: (time, 'event' or 'heartbeat')."""
    first: dict[str, tuple[int, str]] = {}
    for source, points in (("event", events), ("heartbeat", heartbeats)):
        for p in points:
            shown = p.values.get("detail") if source == "event" else p.values.get("tariff_version")
            if source == "event" and p.values.get("code") != "tariff_applied":
                continue
            if _names(shown, version) and (p.meter not in first or p.ts_ms < first[p.meter][0]):
                first[p.meter] = (p.ts_ms, source)
    return first


def _names(shown: object, version: str) -> bool:
    """An event detail names the version as plain text or as {"version": V}."""
    if shown == version:
        return True
    if isinstance(shown, str) and shown.startswith("{"):
        return f'"version":"{version}"' in shown.replace(" ", "")
    return False


def progress(
    rollout: Rollout, seen: Mapping[str, tuple[int, str]], as_of_ms: int
) -> list[MeterProgress]:
    """Per targeted meter: applied (by as_of), overdue (deadline passed), else pending."""
    out = []
    for meter in rollout.meters:
        hit = seen.get(meter)
        if hit is not None and hit[0] <= as_of_ms:
            out.append(MeterProgress(meter, "applied", hit[0], hit[1]))
        elif as_of_ms > rollout.deadline_ms:
            out.append(MeterProgress(meter, "overdue"))
        else:
            out.append(MeterProgress(meter, "pending"))
    return out


def summary(rollout: Rollout, rows: list[MeterProgress], as_of_ms: int) -> dict[str, Any]:
    """The JSON of `GET /api/tariffs/{version}`."""
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("applied", "pending", "overdue")}
    return {
        "version": rollout.version,
        "effective_from": format_ts(rollout.effective_from_ms),
        "deadline": format_ts(rollout.deadline_ms),
        "as_of": format_ts(as_of_ms),
        "targeted": len(rows),
        **counts,
        "meters": [r.as_dict() for r in rows],
    }
