"""The seams between the parts: small protocols, one implementation per backend."""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS
from monitor.core.registry import MeterRow
from monitor.core.schema import (
    ELEC_READING,
    TAXI_EVENT,
    TAXI_STATUS,
    TAXI_TRIP,
    Measurement,
    Record,
)


@dataclass(frozen=True)
class StoreHealth:
    """What `/healthz` and the metrics report about a telemetry store."""

    writable: bool
    backend: str
    buffered_points: int = 0
    dropped_points: int = 0
    detail: str = ""


@dataclass(frozen=True)
class Point:
    """One stored point read back: time and the values of one measurement."""

    ts_ms: int
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Series:
    """One meter's points of one measurement, columnar, oldest first (NaN = absent)."""

    ts_ms: NDArray[np.int64]
    values: dict[str, NDArray[np.float64]]

    def column(self, name: str) -> NDArray[np.float64] | None:
        """A column, or None when the meter never sent that field."""
        col = self.values.get(name)
        if col is None or bool(np.isnan(col).all()):
            return None
        return col


@dataclass(frozen=True)
class Columns:
    """One meter's points of one measurement, columnar, oldest first: every field asked
    for, numeric ones as float64 (NaN = absent), text ones as object arrays of str (None =
    absent). What a reduction over a long window reads instead of one `Point` per point."""

    ts_ms: NDArray[np.int64]
    values: dict[str, NDArray[Any]]

    def __len__(self) -> int:
        return len(self.ts_ms)


@dataclass(frozen=True)
class MeterPoint:
    """A point with the meter it belongs to (events across a fleet)."""

    meter: str
    ts_ms: int
    values: dict[str, Any] = field(default_factory=dict)


class Publisher(Protocol):
    """Hands one MQTT message to the broker (the worker's connection, or a test's):
    `publish(topic, payload, retain)`.

    Positional-only, so any callable of that shape fits whatever it names its parameters
    (a bound `publish` method, a test's recorder, a lambda), and `retain` has no default:
    every caller says whether the broker keeps the message for later subscribers.

    Raises `ConnectionError` when it cannot; the caller decides whether to retry
    (the notifier's outbox) or to let the next pass refresh it (retained decisions).
    """

    def __call__(self, topic: str, payload: bytes, retain: bool, /) -> None: ...


class TelemetryStore(Protocol):
    """Where validated telemetry is kept (embedded SQLite or InfluxDB)."""

    backend: str

    def write(self, records: Sequence[Record]) -> None:
        """Store a batch durably (or spill it durably); raise if that is impossible."""

    def history(
        self,
        measurement: Measurement,
        meter: str,
        fields: Sequence[str],
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
    ) -> list[Point]:
        """A meter's points of one measurement in [start, end), oldest first."""
        ...

    def latest(self, measurement: Measurement, meter: str) -> Point | None:
        """The newest point of a meter in one measurement (by event time)."""
        ...

    def series(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        district: str | None = None,
    ) -> dict[str, Series]:
        """Numeric fields of every meter (of one district) in [start, end], per meter."""
        ...

    def columns(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        meter: str | None = None,
    ) -> dict[str, Columns]:
        """Any fields (text too) of every meter, or of one, in [start, end], per meter
        (meters without a point left out); see `Columns`."""
        ...

    def points(self, measurement: Measurement, start_ms: int, end_ms: int) -> list[MeterPoint]:
        """All points of a (sparse) measurement, e.g. events, in [start, end], by time."""
        ...

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until what was written is readable (a buffered store drains); False on timeout."""
        ...

    def health(self) -> StoreHealth:
        """Writable or not, and what is buffered or was dropped."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources."""


# --- the service's own state: one protocol per role -----------------------------------
#
# A domain types against the role it needs; `StateStore` is all of them, what an
# implementation (`store.state.SqliteState`, embedded) provides.


@dataclass(frozen=True)
class SeenUpdate:
    """What one ingest batch saw of one meter."""

    kind: str
    district: str
    first_ts: int
    last_ts: int
    messages: int
    received_at: float


class SeenMeter(NamedTuple):
    """A meter that sent telemetry, as the `seen` table has it."""

    kind: str
    district: str | None
    last_ts: int


@dataclass(frozen=True)
class MeterSummary:
    """One line of the meter list: registry, telemetry presence, current decision."""

    meter_id: str
    kind: str
    registered: bool
    district: str | None
    lot: str | None
    last_ts: int | None
    messages: int
    state: str | None
    decision: str | None
    error_pct: float | None = None  # the decision's estimated error, when it has one
    reason: dict[str, Any] | None = None  # the decision's first (worst) reason


@dataclass(frozen=True)
class MeterFilter:
    """Filters of `GET /api/meters`; None means any."""

    kind: str | None = None
    district: str | None = None
    lot: str | None = None
    state: str | None = None
    decision: str | None = None
    registered: bool | None = None
    region: str | None = None


class DueMeter(NamedTuple):
    """A registered meter whose verification falls due."""

    meter_id: str
    kind: str
    lot: str | None
    due_on: date


class ErrorPoint(NamedTuple):
    """A meter's estimated error as one pass of a day saw it (None: no judgeable estimate)."""

    as_of: str
    state: str
    error_pct: float | None
    low_pct: float | None
    high_pct: float | None


class SampleRow(NamedTuple):
    """A laboratory result for a meter drawn from a lot."""

    meter: str
    error_pct: float | None
    passed: bool


class WorkOrderRow(NamedTuple):
    """An authorised intervention as stored."""

    id: int
    meter: str
    start_ms: int
    end_ms: int
    reason: str
    created_at: str


class TariffRollout(NamedTuple):
    """A rolled-out tariff: its body, when it takes effect, its deadline, its meters."""

    body: dict[str, Any]
    effective_from_ms: int
    deadline_ms: int
    meters: list[str]


class Registry(Protocol):
    """The fleet as registered (registry rows and their due dates)."""

    def upsert_meters(self, rows: Iterable[MeterRow]) -> tuple[int, int]:
        """Insert or replace registry rows in one transaction; returns (added, updated)."""
        ...

    def get_meter(self, meter_id: str) -> MeterRow | None:
        """The registry row of a meter, or None when unregistered."""
        ...

    def registry_rows(self, kind: str | None = None) -> list[MeterRow]:
        """Every registry row (of one kind)."""
        ...

    def due_by(self, horizon: date, limit: int) -> tuple[list[DueMeter], int]:
        """The first `limit` meters due by `horizon`, and how many are."""
        ...


class Presence(Protocol):
    """Which meters sent telemetry, when, and how much (written by ingest)."""

    def note_seen(self, updates: Mapping[str, SeenUpdate]) -> None:
        """Record which meters sent telemetry (per meter: kind, district, span, count)."""
        ...

    def note_records(self, records: Iterable[Record], received_at: float) -> None:
        """Record the meters of a batch of telemetry (the ingest worker's one pass per batch)."""
        ...

    def flush_seen(self) -> int:
        """Write what `note_*` gathered; returns meters written."""
        ...

    def seen(self, meter_id: str) -> dict[str, Any] | None:
        """Telemetry presence of one meter."""
        ...

    def count_unregistered(self) -> int:
        """Meters that sent telemetry but are not in the registry."""
        ...

    def all_seen(self, kind: str | None = None) -> dict[str, SeenMeter]:
        """Every meter that sent telemetry (of one kind): id → (kind, district, last event)."""
        ...

    def last_received(self) -> float | None:
        """Wall-clock time (epoch s) the newest telemetry message was received."""
        ...

    def latest_event_ts(self) -> int | None:
        """Newest telemetry event time seen (the default `as_of`)."""
        ...


class DecisionLog(Protocol):
    """The latest decision of every meter and lot, and every district's balance result."""

    def decision(self, scope: str, subject: str) -> dict[str, Any] | None:
        """The stored decision JSON of a meter or lot, or None before the first evaluation."""
        ...

    def save_decisions(self, scope: str, bodies: Iterable[dict[str, Any]]) -> None:
        """Upsert decision JSONs (scope `meter` or `lot`) in one transaction; a meter's
        estimated error joins its history (one point per meter and day)."""
        ...

    def error_history(self, meter_id: str, limit: int = 400) -> list[ErrorPoint]:
        """A meter's estimated error per day of evaluation, oldest first (the last `limit`)."""
        ...

    def decisions_where(self, scope: str, decision: str, limit: int = 100) -> list[dict[str, Any]]:
        """Stored decision JSONs of one scope with one decision."""
        ...

    def decision_counts(self) -> list[dict[str, Any]]:
        """Meters per (kind, state, decision) of their current decisions."""
        ...

    def save_district(self, district: str, as_of: str, body: dict[str, Any]) -> None:
        """Store a district's latest energy-balance result."""
        ...

    def district(self, district: str) -> dict[str, Any] | None:
        """A district's latest energy-balance result."""
        ...

    def list_districts(
        self, after: str | None, limit: int, gates_passed: bool | None = None
    ) -> list[dict[str, Any]]:
        """Evaluated districts by name after `after`: each one's latest result body."""
        ...


class LotSamples(Protocol):
    """Laboratory results of the meters drawn from lots."""

    def save_sample_results(self, lot: str, results: Iterable[SampleRow]) -> None:
        """Record results for drawn meters (a later result replaces an earlier one)."""
        ...

    def sample_results(self, lot: str) -> list[SampleRow]:
        """Laboratory results recorded for a lot."""
        ...


class TaxiLedger(Protocol):
    """Work orders and tariff rollouts: what was authorised for taxi meters."""

    def add_workorder(self, meter: str, start_ms: int, end_ms: int, reason: str) -> int:
        """Record an authorised intervention; returns its id (the same intervention
        again, e.g. a retried request, returns the first one's id)."""
        ...

    def workorders(
        self, meter: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[WorkOrderRow]:
        """Work orders (of one meter), by id."""
        ...

    def save_tariff(
        self,
        version: str,
        body: dict[str, Any],
        effective_from_ms: int,
        deadline_ms: int,
        meters: list[str],
    ) -> bool:
        """Record a rolled-out tariff and the meters it was pushed to; False (nothing
        changed) when that version was already rolled out."""
        ...

    def tariff(self, version: str) -> TariffRollout | None:
        """A rollout, or None when that version was never rolled out."""
        ...

    def tariff_bodies(self) -> dict[str, dict[str, Any]]:
        """Every rolled-out tariff body by version."""
        ...

    def tariff_versions(self) -> list[str]:
        """Rolled-out tariff versions, newest first."""
        ...


class FleetQueries(Protocol):
    """Reads across the roles, for lists and the overview."""

    def kind_counts(self) -> dict[str, int]:
        """Meters per kind: registry ∪ meters seen."""
        ...

    def list_meters(self, flt: MeterFilter, after: str | None, limit: int) -> list[MeterSummary]:
        """Registry ∪ meters seen, filtered, ordered by meter id, keyset-paginated."""
        ...


@dataclass(frozen=True)
class Mismatch:
    """One message of a registered meter under another district's topic."""

    meter: str
    topic_district: str
    registered_district: str
    ts_ms: int
    received_at: float


class MismatchRow(NamedTuple):
    """What the state holds of a meter's messages under one foreign district."""

    meter: str
    topic_district: str
    registered_district: str
    messages: int
    first_ts: int
    last_ts: int
    last_received: float


class DistrictGuard(Protocol):
    """Holding registered meters to their district: the map ingest checks topics against."""

    def registry_version(self) -> int:
        """A number that changes whenever the registry does (in any process); cheap."""
        ...

    def registry_districts(self) -> dict[str, str]:
        """Registered electricity meters → the district the registry puts them in."""
        ...

    def note_mismatches(self, found: Iterable[Mismatch]) -> None:
        """Count messages of registered meters under another district's topic."""
        ...

    def mismatches(self, min_messages: int = 1) -> list[MismatchRow]:
        """Meters seen under a district the registry does not put them in."""
        ...


class DayMarks(Protocol):
    """Which (district or taxi key, UTC day)s got electricity readings or taxi telemetry
    (`written_days`): what a telemetry store reports once a batch it accepted is readable
    (the evaluation re-summarises those days)."""

    def mark_days(self, days: Collection[tuple[str, int]]) -> None:
        """Mark (district, UTC day number = ts_ms // DAY_MS) pairs as written, durably and
        all under one new sequence number (one write per batch); raise if it cannot."""
        ...


# Taxi telemetry is kept per (bucket of meters, UTC day) (`taxi.days`): a late trip of one
# taxi makes its bucket's day stale, not the whole fleet's. 64 buckets: a late trip re-reads
# 1/64 of a day's heartbeats (per meter), while a pass looks up 64 keys' summaries and
# marks (two small state queries each) and a bucket still holds enough taxis for zstd to
# pack its day well from a few hundred taxis up. Changing it orphans every taxi summary
# (they are read again once, and forgotten as their days leave the window).
TAXI_DAY_BUCKETS = 64
TAXI_KEY_PREFIX = "taxi/"
_TAXI_MEASUREMENTS = frozenset({TAXI_TRIP.name, TAXI_EVENT.name, TAXI_STATUS.name})


def taxi_day_key(meter: str) -> str:
    """The key a taxi meter's day summaries and marks go under, in place of a district:
    `taxi/<bucket>`, a stable hash (CRC-32, the same in every process and release) of the
    meter id. No district can be named so: a district is one topic level, without "/"."""
    return f"{TAXI_KEY_PREFIX}{zlib.crc32(meter.encode()) % TAXI_DAY_BUCKETS:02d}"


# Which rows of the day tables are taxi keys': SQL of SQLite and PostgreSQL alike (no
# `%`, which a PostgreSQL driver reads as a placeholder). `forget_days` deletes the two
# kinds apart, each by a range of the day index.
TAXI_KEY_SQL = f"substr(district, 1, {len(TAXI_KEY_PREFIX)}) = '{TAXI_KEY_PREFIX}'"


def written_days(records: Iterable[Record]) -> set[tuple[str, int]]:
    """The (district, UTC day) pairs a batch writes electricity readings to, and the
    (`taxi_day_key`, UTC day) pairs it writes taxi trips, events or heartbeats to: what a
    store marks once the batch is readable (late and duplicate points too)."""
    out = set()
    for r in records:
        name = r.measurement.name
        if name == ELEC_READING.name:
            if r.district:
                out.add((r.district, r.ts_ms // DAY_MS))
        elif name in _TAXI_MEASUREMENTS:
            out.add((taxi_day_key(r.meter), r.ts_ms // DAY_MS))
    return out


class DaySummaries(DayMarks, Protocol):
    """What an evaluation pass kept of each (district, complete UTC day), and the marks
    that say which of them changed since (`evaluation.days`).

    A summary saved with `upto` = the `mark_sequence()` read before its data was read
    holds every reading marked up to it: marks ≤ `upto` of its day are cleared with it,
    a later mark stays and makes the day stale again.
    """

    def mark_sequence(self) -> int:
        """The sequence number of the newest mark (0 before any)."""
        ...

    def marked_days(self, district: str, first: int, last: int) -> set[int]:
        """The district's marked days in [first, last]."""
        ...

    def day_summaries(self, district: str, first: int, last: int) -> dict[int, bytes]:
        """The district's stored day summaries in [first, last], by day."""
        ...

    def save_day_summaries(self, district: str, bodies: Mapping[int, bytes], upto: int) -> None:
        """Store day summaries built from reads after `mark_sequence()` was `upto` (one
        built from an older read never replaces a newer one) and clear those days' marks
        ≤ `upto`, in one transaction."""
        ...

    def forget_days(self, before: int, taxi_before: int | None = None) -> int:
        """Drop summaries and marks of districts' days before `before` and of taxi keys'
        (`taxi_day_key`) before `taxi_before` (default: `before`; the taxi window is its
        own); returns summaries dropped."""
        ...


class IngestState(Presence, DistrictGuard, Protocol):
    """What the ingest worker needs of the state."""


class StateUnavailable(RuntimeError):
    """The state store cannot be reached (a shared database is down or refuses us).

    What the API answers 503 with and the evaluation waits out; telemetry is not
    affected (it lives in the telemetry store).
    """


@dataclass(frozen=True)
class StateHealth:
    """What `/healthz` reports about the state store."""

    backend: str
    available: bool
    detail: str = ""


class StateStore(
    Registry,
    Presence,
    DistrictGuard,
    DecisionLog,
    DaySummaries,
    LotSamples,
    TaxiLedger,
    FleetQueries,
    Protocol,
):
    """Everything the service owns, one implementation per backend."""

    backend: str

    def health(self) -> StateHealth:
        """Reachable or not, and why."""
        ...

    def close(self) -> None:
        """Write what is still in memory, then close."""
        ...


# --- alerts and notifications: their storage, one implementation per backend ----------


@dataclass
class AlertRecord:
    """One stored alert; `evidence` and `history` are JSON text, as stored."""

    id: int
    key: str
    rule: str
    severity: str
    kind: str
    meter: str | None
    lot: str | None
    district: str | None
    message: str
    first_seen: int
    last_seen: int
    count: int
    status: str
    evidence: str
    history: str


@dataclass(frozen=True)
class AlertFilter:
    """Filters of the alert list; None means any. `since_ms` is on last_seen."""

    status: str | None = None
    severity: str | None = None
    kind: str | None = None
    district: str | None = None
    meter: str | None = None
    lot: str | None = None
    since_ms: int | None = None


class AlertWrites(Protocol):
    """The alert rows inside one write transaction (writers are serialised)."""

    def by_keys(self, keys: Sequence[str]) -> dict[str, AlertRecord]:
        """The stored alerts of these keys (absent keys left out)."""
        ...

    def by_id(self, alert_id: int) -> AlertRecord | None:
        """One stored alert."""
        ...

    def insert(self, records: Sequence[AlertRecord]) -> list[int]:
        """Store new alerts in order (their `id` is ignored); returns the ids given."""
        ...

    def update(self, records: Sequence[AlertRecord]) -> None:
        """Write back changed alerts (by id)."""
        ...

    def unresolved_before(self, before_ms: int) -> list[AlertRecord]:
        """Alerts not resolved whose last sighting is before `before_ms`, by id."""
        ...

    def occurrences(self, alert_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """The events counted for these alerts: occurrence key → event ms, per alert id
        (alerts without any left out)."""
        ...

    def add_occurrences(self, rows: Sequence[tuple[int, str, int]]) -> None:
        """Count events (alert id, occurrence key, event ms); one already counted is kept."""
        ...


class AlertStore(Protocol):
    """Where the alert book keeps its alerts (SQLite beside the state, or PostgreSQL)."""

    def writing(self) -> AbstractContextManager[AlertWrites]:
        """One all-or-nothing write; concurrent writers (threads, workers) wait their turn."""
        ...

    def get(self, alert_id: int) -> AlertRecord | None:
        """One alert."""
        ...

    def query(self, flt: AlertFilter, after_id: int, limit: int) -> list[AlertRecord]:
        """Alerts by id after `after_id`, filtered."""
        ...

    def count_open(self) -> dict[str, int]:
        """Open (unacknowledged) alerts per severity (severities without one left out)."""
        ...

    def close(self) -> None:
        """Release the connection."""


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


def compact_json(value: Any) -> str:
    """JSON as the outbox stores and receivers send it: no spaces, anything else as str."""
    return json.dumps(value, separators=(",", ":"), default=str)


class OutboxStore(Protocol):
    """The notifier's durable tables: outbox rows, group buffers, escalation timers.

    Every method but `transaction` and `claim` runs inside the caller's transaction (or
    on its own). Delivery is claimed: `claim` hands rows to one claimant for a lease,
    and `finish`/`postpone` settle only rows the claimant still holds, so several
    workers deliver each row once, and a row whose claimant died is claimed again when
    its lease runs out.
    """

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing; writers wait their turn."""
        ...

    def add(self, n: Notification, now: float) -> None:
        """Queue a notification; a key already queued or delivered is ignored (dedup)."""

    def claim(self, now: float, limit: int, owner: str, lease_s: float) -> list[Notification]:
        """Take up to `limit` due pending rows, oldest first, for `lease_s` seconds."""
        ...

    def finish(self, row_id: int, state: str, now: float, owner: str, error: str = "") -> bool:
        """Mark a claimed row `done` or `failed`; False when the claim was lost."""
        ...

    def postpone(self, row_id: int, next_at: float, owner: str, error: str) -> bool:
        """Count a failed attempt and schedule the next; False when the claim was lost."""
        ...

    def release(self, row_ids: Sequence[int], owner: str) -> None:
        """Give back claimed rows that were not attempted (due again at once)."""

    def pending(self) -> int:
        """Rows not yet delivered or given up."""
        ...

    def prune(self, before: float) -> None:
        """Drop finished rows older than `before`."""

    def buffer(
        self, route: str, receiver: str, action: str, alert: dict[str, Any], member: str, now: float
    ) -> None:
        """Hold an alert for a grouped notification (a later change replaces its entry)."""

    def groups(self) -> list[tuple[str, str, str, float]]:
        """(route, receiver, action, window start) of every open group."""
        ...

    def take_group(
        self, route: str, receiver: str, action: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """Remove and return a group's (member key, alert), by alert id."""
        ...

    def buffered(self) -> int:
        """Alerts held in group buffers."""
        ...

    def arm(self, route: str, alert: dict[str, Any], due_at: float) -> None:
        """Start a timer; re-submitting the same opening keeps the running one."""

    def refresh(self, alert: dict[str, Any]) -> None:
        """Let escalations carry the alert as it is now."""

    def disarm(self, alert_id: int) -> list[tuple[str, int]]:
        """Stop an alert's timers; returns (route, steps already sent) of each."""
        ...

    def due_escalations(self, now: float) -> list[Escalation]:
        """Armed timers that are due (held by this transaction until it ends)."""
        ...

    def advance(self, route: str, alert_id: int, due_at: float | None) -> None:
        """One step sent; the next is due at `due_at` (None: none, stay armed)."""

    def drop_escalation(self, route: str, alert_id: int) -> None:
        """Forget a timer."""

    def close(self) -> None:
        """Release the connection."""


def meter_series(rows: Sequence[Sequence[Any]], fields: Sequence[str]) -> Series:
    """Rows (ts, *fields) of one meter, oldest first → its Series (None → NaN).

    One numpy conversion of the whole block (C loops, no per-row Python work): the
    times go through float64, exact for |ts| < 2**53 ms (checked; else converted apart).
    """
    width = len(fields) + 1
    if not rows:
        return Series(np.empty(0, dtype=np.int64), {f: np.empty(0) for f in fields})
    block = _floats(rows)
    if block.shape != (len(rows), width):
        raise ValueError(f"rows of {block.shape[1:]} columns, expected ts + {len(fields)}")
    times = block[:, 0]
    if bool(np.isnan(times).any()) or float(np.abs(times).max()) >= _EXACT:
        ts = np.array([r[0] for r in rows], dtype=np.int64)
    else:
        ts = times.astype(np.int64)
    # One contiguous row per field (strided column views would slow every later pass).
    cols = np.ascontiguousarray(block[:, 1:].T)
    return Series(ts, {f: cols[k] for k, f in enumerate(fields)})


_EXACT = float(2**53)


def _floats(values: Sequence[Any]) -> NDArray[np.float64]:
    # numpy turns None into NaN when the dtype is float.
    return np.array(values, dtype=np.float64)


def group_series(rows: Sequence[Sequence[Any]], fields: Sequence[str]) -> dict[str, Series]:
    """Rows (meter, ts, *fields) sorted by meter then ts → one Series per meter (None → NaN)."""
    if not rows:
        return {}
    columns = list(zip(*rows, strict=True))
    if len(columns) != len(fields) + 2:
        raise ValueError(f"rows have {len(columns)} columns, expected meter, ts + {len(fields)}")
    meters = np.array(columns[0], dtype=object)
    ts = np.array(columns[1], dtype=np.int64)
    cols = [_floats(c) for c in columns[2:]]
    # A meter's rows are consecutive: cut where the meter changes (compared in C).
    cuts = [0, *(np.flatnonzero(meters[1:] != meters[:-1]) + 1).tolist(), len(rows)]
    out: dict[str, Series] = {}
    for a, b in itertools.pairwise(cuts):
        out[meters[a]] = Series(ts[a:b], {f: c[a:b] for f, c in zip(fields, cols, strict=True)})
    return out


def text_or_float_columns(
    rows: Sequence[Sequence[Any]], fields: Sequence[str], text: Sequence[str]
) -> Columns:
    """Rows (ts, *fields) of one meter, oldest first → its `Columns`: the `text` fields as
    object arrays (None stays None), the others as float64 (None → NaN)."""
    if not rows:
        empty = {f: np.empty(0, dtype=object if f in text else np.float64) for f in fields}
        return Columns(np.empty(0, dtype=np.int64), empty)
    columns = list(zip(*rows, strict=True))
    if len(columns) != len(fields) + 1:
        raise ValueError(f"rows of {len(columns)} columns, expected ts + {len(fields)}")
    values: dict[str, NDArray[Any]] = {}
    for name, col in zip(fields, columns[1:], strict=True):
        if name in text:
            values[name] = np.array(col, dtype=object)
        else:
            values[name] = _floats(col)
    return Columns(np.array(columns[0], dtype=np.int64), values)


# --- evaluation passes shared by the workers of a cluster ------------------------------


@dataclass(frozen=True)
class PassTicket:
    """A pass as the board has it: what it evaluates and how far it is."""

    id: int
    key: str | None  # a cron slot's pass has one; a requested pass none
    as_of_ms: int
    rules_version: str
    status: str  # running, done, failed
    summary: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Partition:
    """A share of a pass one worker holds for a lease: a stage and its items."""

    pass_id: int
    stage: int
    name: str
    items: list[str]


@dataclass(frozen=True)
class PlannedPartition:
    """A partition to create with its pass."""

    stage: int
    name: str
    items: list[str]


@dataclass(frozen=True)
class StagedDecision:
    """A decision a partition produced, before the pass ends (`order` orders them as a
    single worker's pass would; `source` is the district that decided a meter)."""

    scope: str
    subject: str
    order: str
    source: str
    body: dict[str, Any]
    # Each reason's distinct events (`Reason.occurrences`, kept out of the body): what
    # the finish's alerts count, as one worker's pass counts them.
    occurrences: tuple[tuple[tuple[str, int], ...], ...] = ()


@dataclass(frozen=True)
class StagedDistrict:
    """A district's result a partition produced, with what it alerts on (failed gates
    first, then a misfit: `Reason.as_dict()`s)."""

    name: str
    body: dict[str, Any]
    gate_failed: bool
    reasons: list[dict[str, Any]]


class LeaseLost(RuntimeError):
    """A partition's lease ran out and another worker took it: this one's work is void."""


class PassBoard(Protocol):
    """Passes split into partitions that workers claim with leases (a cluster's state)."""

    def open_pass(
        self,
        key: str | None,
        as_of: Callable[[], int | None],
        rules_version: str,
        plan: Callable[[int], list[PlannedPartition]],
        owner: str,
    ) -> PassTicket | None:
        """The pass to work on: the one of `key` (a cron slot) if it exists, a running one
        with the same as_of and rules (joined), else a new one as of `as_of()` planned
        with `plan` (None: nothing to evaluate). While another pass runs, that one is
        returned: the caller helps it finish, then asks again."""
        ...

    def get_pass(self, pass_id: int) -> PassTicket:
        """A pass as it is now."""
        ...

    def running_pass(self) -> PassTicket | None:
        """The pass running now, if any."""
        ...

    def claim(self, pass_id: int, owner: str, lease_s: float) -> Partition | None:
        """A partition of the earliest unfinished stage that no live lease holds."""
        ...

    def renew(self, part: Partition, owner: str, lease_s: float) -> bool:
        """Extend the lease (the heartbeat); False when it was lost."""
        ...

    def completing(self, part: Partition, owner: str) -> AbstractContextManager[None]:
        """A transaction in which the partition's results are staged; it commits marked
        done, or raises `LeaseLost` (and stages nothing) when the lease was lost."""
        ...

    def release(self, part: Partition, owner: str, error: str, max_attempts: int) -> None:
        """Give a partition back after an error; the pass fails after `max_attempts`."""

    def stage_decisions(self, pass_id: int, rows: Sequence[StagedDecision]) -> None:
        """Stage decisions (a meter staged twice keeps the later district's)."""

    def stage_districts(self, pass_id: int, districts: Sequence[StagedDistrict]) -> None:
        """Stage district results."""

    def replace_district_bodies(self, pass_id: int, bodies: Sequence[dict[str, Any]]) -> None:
        """Write staged district results over (lot extensions at the finish)."""

    def district_reasons(self, pass_id: int) -> list[tuple[str, list[dict[str, Any]]]]:
        """Districts with something to alert on and their reasons: those with a failed
        gate first, then the rest, each by name (one worker's order)."""
        ...

    def staged(
        self, pass_id: int, scope: str, subjects: Sequence[str] | None = None
    ) -> list[StagedDecision]:
        """Staged decisions of a scope (of some subjects), in pass order."""
        ...

    def staged_findings(self, pass_id: int) -> list[StagedDecision]:
        """Staged meter and lot decisions that can raise an alert, in pass order."""
        ...

    def staged_districts(
        self, pass_id: int, names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Staged district results (all, or some), by name."""
        ...

    def replace_staged(self, pass_id: int, rows: Sequence[StagedDecision]) -> None:
        """Write staged decisions over (lot extensions at the finish)."""

    def counts(self, pass_id: int) -> dict[str, Any]:
        """What the pass decided, counted as `EvaluationResult.summary` counts."""
        ...

    def publish_pass(self, pass_id: int, summary: dict[str, Any]) -> None:
        """Inside the finishing transaction: staged results become the state's, the pass
        is done with its summary (older passes' staging is dropped)."""

    def once(self, job: str, slot: str, owner: str) -> bool:
        """True for the first caller of a job's slot in the cluster, False for the rest."""
        ...


# --- the audit log: append-only, hash-chained (core/audit.py seals and verifies) -------


@dataclass(frozen=True)
class AuditEntry:
    """A state change to record: who (name and role), what action, on what, and the
    change itself (before/after, or the request body)."""

    actor: str
    role: str
    action: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)


class AuditRow(NamedTuple):
    """One stored audit record: its sequence number, its canonical JSON body (which
    names the previous record's hash) and the SHA-256 of that body."""

    seq: int
    body: str
    hash: str


class AuditAnchor(NamedTuple):
    """Where the chain starts after old records were purged: the last purged record."""

    seq: int
    hash: str


class AuditLog(Protocol):
    """The audit log: records are appended and read back, never changed.

    An implementation only stores rows; `core.audit` builds and checks them, so every
    backend chains the same way. `append` must be atomic against other appenders (the
    head it chains to is the newest row when it commits).
    """

    def append(self, entry: AuditEntry) -> AuditRow:
        """Seal `entry` onto the chain's head and store it; returns the stored row."""
        ...

    def rows(self, after_seq: int, limit: int) -> list[AuditRow]:
        """Stored rows with seq > after_seq, by seq."""
        ...

    def anchor(self) -> AuditAnchor | None:
        """The last purged record, or None when nothing was ever purged."""
        ...

    def head(self) -> AuditAnchor | None:
        """The newest record as the log itself keeps it (a truncation check)."""
        ...

    def purge(self, before: str) -> int:
        """Remove records written before `before` (RFC 3339 UTC), moving the anchor;
        returns how many. The purge itself is then appended as a record."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


# --- shadow rules and promotions (evaluation/shadow.py) --------------------------------


class RulesShelf(Protocol):
    """Where an uploaded candidate, the latest shadow comparison, the rules texts kept
    by promotions and the promotion log live: files in the data directory, or the
    state database a cluster shares (then the last promotion is the cluster's rules)."""

    shared: bool

    def upload(self) -> tuple[str, str] | None:
        """The uploaded candidate: (where it is kept, its text), or None."""
        ...

    def put_upload(self, text: str) -> None:
        """Keep an uploaded candidate (replacing one before)."""

    def drop_upload(self) -> bool:
        """Drop the uploaded candidate; whether there was one."""
        ...

    def report(self) -> str | None:
        """The latest shadow comparison (JSON), or None."""
        ...

    def put_report(self, text: str) -> None:
        """Keep the latest shadow comparison (JSON)."""

    def kept(self) -> dict[str, str]:
        """Rules texts kept by promotions, by digest."""
        ...

    def knows(self, digest: str) -> bool:
        """Whether a rules text of this digest was kept by a promotion."""
        ...

    def promote(
        self, record: dict[str, Any], texts: dict[str, str], to_digest: str, drop_upload: bool
    ) -> None:
        """All at once: keep `texts` (by digest), log the promotion to the text of
        `to_digest`, drop the upload."""

    def promotions(self) -> list[dict[str, Any]]:
        """The promotion log, oldest first."""
        ...

    def promoted(self) -> tuple[str, str] | None:
        """A shared shelf's last promoted rules (digest, text); None on files (the rules
        file is what a promotion writes there)."""
        ...
