"""Bulk import of telemetry history from files: a utility's backfill.

A head-end or a recorder exports what the meters sent as JSON Lines, one message per
line: `{"topic": "meters/elec/TA1/M1/reading", "payload": {...}}` (the payload as over
MQTT: an object, or the raw text). Each line is validated exactly as ingest validates a
message (`parse_message`: the topic's identity, the payload's schema, the configured
bounds, timestamps not ahead of the receive clock, the registry's district), and stored
in batches through the telemetry store, which marks the (district, day)s it wrote.
A line that is refused goes to the rejects file with its line number, reason and
detail (a file import has no broker to dead-letter to), and is counted.

`ImportReport.days` says which (district, days) it wrote electricity readings to:
what `evaluation.backfill.summarise` then keeps as day summaries.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from monitor.core.ports import TAXI_KEY_PREFIX, IngestState, TelemetryStore, written_days
from monitor.core.schema import Record
from monitor.ingest.limits import Limits
from monitor.ingest.telemetry import Rejection, parse_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportRules:
    """What a line is checked against: the ingest settings' topic root, size cap and
    bounds, the receive time (epoch ms) and the registry's meter → district map."""

    topic_root: str
    max_payload_bytes: int
    limits: Limits
    received_ms: int
    districts: Mapping[str, str]


@dataclass(frozen=True)
class Pace:
    """Back-pressure on a store that buffers (InfluxDB's spool): a file is read far
    faster than InfluxDB takes it, and a spool past its bound drops its oldest points.
    The import waits while more than `max_buffered` points wait to be sent, and gives up
    (raising `ImportStalled`) when none has gone for `stall_s`."""

    max_buffered: int = 200_000
    stall_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def wait(self, store: TelemetryStore) -> None:
        health = store.health()
        waiting, since = health.buffered_points, self.clock()
        while health.buffered_points > self.max_buffered:
            if health.buffered_points < waiting:
                waiting, since = health.buffered_points, self.clock()
            elif self.clock() - since > self.stall_s:
                raise ImportStalled(
                    f"the telemetry store took nothing for {self.stall_s:.0f} s "
                    f"({health.buffered_points} points waiting): {health.detail}"
                )
            self.sleep(0.05)
            health = store.health()


@dataclass
class ImportReport:
    """What an import did."""

    lines: int = 0
    stored: int = 0
    ignored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # Per district, the first and last UTC day of electricity readings written.
    days: dict[str, tuple[int, int]] = field(default_factory=dict)
    summarised: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "stored": self.stored,
            "ignored": self.ignored,
            "rejected": dict(sorted(self.rejected.items())),
            "districts": len(self.days),
            "days_summarised": self.summarised,
        }


def parse_line(line: str, rules: ImportRules) -> Record | Rejection | None:
    """One line of the file → what ingest would make of the message it holds."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return Rejection("invalid_line", f"not JSON: {exc}")
    if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str):
        return Rejection("invalid_line", 'expected {"topic": "...", "payload": ...}')
    payload = obj.get("payload")
    if isinstance(payload, str):
        body = payload.encode("utf-8")
    elif isinstance(payload, dict):
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    else:
        return Rejection("invalid_line", "payload must be a JSON object or its text")
    return parse_message(
        obj["topic"],
        body,
        rules.topic_root,
        rules.max_payload_bytes,
        rules.limits,
        rules.received_ms,
        rules.districts,
    )


def import_lines(
    lines: Iterable[str],
    store: TelemetryStore,
    state: IngestState,
    rules: ImportRules,
    rejects: TextIO | None = None,
    batch: int = 5000,
    pace: Pace = Pace(),
) -> ImportReport:
    """Validate and store every line; refused lines go to `rejects` (JSON Lines)."""
    report = ImportReport()
    pending: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.lines += 1
        result = parse_line(line, rules)
        if result is None:
            report.ignored += 1
        elif isinstance(result, Rejection):
            report.rejected[result.reason] += 1
            if rejects is not None:
                refused = {"line": number, "reason": result.reason, "detail": result.detail}
                rejects.write(json.dumps({**refused, "text": line.rstrip("\n")[:4096]}) + "\n")
        else:
            pending.append(result)
            if len(pending) >= batch:
                _write(pending, store, state, report, pace)
                pending = []
    if pending:
        _write(pending, store, state, report, pace)
    return report


class ImportStalled(RuntimeError):
    """The telemetry store stopped taking the import (InfluxDB away, or refusing)."""


def _write(
    records: list[Record],
    store: TelemetryStore,
    state: IngestState,
    report: ImportReport,
    pace: Pace,
) -> None:
    pace.wait(store)
    store.write(records)
    report.stored += len(records)
    # History is heard of at its own time, not now: importing last year's readings
    # must not make a meter that fell silent since look alive to the offline check.
    state.note_records(records, max(r.ts_ms for r in records) / 1000)
    for key, day in written_days(records):  # what the store marks: districts' days here
        if not key.startswith(TAXI_KEY_PREFIX):
            lo, hi = report.days.get(key, (day, day))
            report.days[key] = (min(lo, day), max(hi, day))
