"""The seams between the parts: small protocols, one implementation per backend."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS
from monitor.core.registry import MeterRow
from monitor.core.schema import ELEC_READING, Measurement, Record


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
        """Record an authorised intervention; returns its id."""
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
    ) -> None:
        """Record a rolled-out tariff and the meters it was pushed to."""
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
    """Which (district, UTC day)s got electricity readings: what a telemetry store reports
    once a batch it accepted is readable (the evaluation re-summarises those days)."""

    def mark_days(self, days: Collection[tuple[str, int]]) -> None:
        """Mark (district, UTC day number = ts_ms // DAY_MS) pairs as written, durably and
        all under one new sequence number (one write per batch); raise if it cannot."""
        ...


def written_days(records: Iterable[Record]) -> set[tuple[str, int]]:
    """The (district, UTC day) pairs a batch writes electricity readings to: what a store
    marks once the batch is readable (late and duplicate readings too)."""
    return {
        (r.district, r.ts_ms // DAY_MS)
        for r in records
        if r.measurement.name == ELEC_READING.name and r.district
    }


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

    def forget_days(self, before: int) -> int:
        """Drop summaries and marks of days before `before`; returns summaries dropped."""
        ...


class IngestState(Presence, DistrictGuard, Protocol):
    """What the ingest worker needs of the state."""


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

    def close(self) -> None:
        """Write what is still in memory, then close."""
        ...


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
