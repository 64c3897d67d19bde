"""The service's own state (registry, meters seen, decisions, lot samples, the taxi
ledger) in SQLite: the embedded implementation of `core.ports.StateStore`.

Telemetry lives in the telemetry store; what the service *owns* lives here, behind
the state roles of `core.ports`, so that another implementation (PostgreSQL, when
several workers share one state) can replace it without touching the domains.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Collection, Iterable, Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from monitor.core.ports import (
    TAXI_KEY_SQL,
    DueMeter,
    ErrorPoint,
    MeterFilter,
    MeterSummary,
    Mismatch,
    MismatchRow,
    SampleRow,
    SeenMeter,
    SeenUpdate,
    StateHealth,
    TariffRollout,
    WorkOrderRow,
)
from monitor.core.registry import COLUMNS, DEFAULT_REGION, MeterRow, add_years
from monitor.core.schema import Record
from monitor.store.seen import SeenBuffer

_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS registry (
        {", ".join(c + (" TEXT PRIMARY KEY" if c == "meter_id" else "") for c in COLUMNS)},
        updated_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))""",
    """CREATE TABLE IF NOT EXISTS seen (
        meter_id TEXT PRIMARY KEY, kind TEXT NOT NULL, district TEXT,
        first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, messages INTEGER NOT NULL,
        last_received REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS decisions (
        subject TEXT NOT NULL, scope TEXT NOT NULL, kind TEXT NOT NULL,
        decision TEXT NOT NULL, state TEXT NOT NULL, as_of TEXT NOT NULL,
        rules_version TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (scope, subject))""",
    """CREATE TABLE IF NOT EXISTS districts (
        district TEXT PRIMARY KEY, as_of TEXT NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sample_results (
        lot TEXT NOT NULL, meter TEXT NOT NULL, error_pct REAL, passed INTEGER NOT NULL,
        PRIMARY KEY (lot, meter))""",
    """CREATE TABLE IF NOT EXISTS workorders (
        id INTEGER PRIMARY KEY AUTOINCREMENT, meter TEXT NOT NULL, start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
        DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))""",
    "CREATE INDEX IF NOT EXISTS workorders_meter ON workorders (meter, start_ms)",
    """CREATE TABLE IF NOT EXISTS tariffs (
        version TEXT PRIMARY KEY, body TEXT NOT NULL, effective_from_ms INTEGER NOT NULL,
        deadline_ms INTEGER NOT NULL, meters TEXT NOT NULL, created_at TEXT NOT NULL
        DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))""",
    "CREATE INDEX IF NOT EXISTS registry_district ON registry (district)",
    # A counter every registry write moves, so that readers in any process (the
    # ingest worker's meter → district map) know when to reload.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS district_mismatches (
        meter_id TEXT NOT NULL, topic_district TEXT NOT NULL, registered_district TEXT NOT NULL,
        messages INTEGER NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,
        last_received REAL NOT NULL, PRIMARY KEY (meter_id, topic_district))""",
    "CREATE INDEX IF NOT EXISTS registry_lot ON registry (lot)",
    # A meter's estimated error, one row per (meter, UTC day of the pass): the last pass
    # of a day stands for it, so a pass every few minutes does not grow it (meter pages).
    """CREATE TABLE IF NOT EXISTS error_history (
        meter_id TEXT NOT NULL, day TEXT NOT NULL, as_of TEXT NOT NULL, state TEXT NOT NULL,
        error_pct REAL, low_pct REAL, high_pct REAL, PRIMARY KEY (meter_id, day))""",
    # (district, UTC day)s with electricity readings written since their summary was
    # built (`mark_days`), each under the sequence number of its newest mark.
    """CREATE TABLE IF NOT EXISTS day_marks (
        district TEXT NOT NULL, day INTEGER NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (district, day))""",
    # What a pass keeps of each (district, complete UTC day): `evaluation.days`.
    """CREATE TABLE IF NOT EXISTS day_summaries (
        district TEXT NOT NULL, day INTEGER NOT NULL, upto INTEGER NOT NULL, body BLOB NOT NULL,
        PRIMARY KEY (district, day))""",
    # Each recorded pass forgets the days before its window (`forget_days`).
    "CREATE INDEX IF NOT EXISTS day_summaries_by_day ON day_summaries (day)",
    "CREATE INDEX IF NOT EXISTS day_marks_by_day ON day_marks (day)",
]
# Days of estimated errors kept per meter (a year and some, for the meter page's chart).
ERROR_HISTORY_DAYS = 400


_MISMATCH_UPSERT = """INSERT INTO district_mismatches VALUES (?, ?, ?, 1, ?, ?, ?)
    ON CONFLICT(meter_id, topic_district) DO UPDATE SET
      registered_district = excluded.registered_district,
      messages = messages + 1,
      first_ts = min(first_ts, excluded.first_ts),
      last_ts = max(last_ts, excluded.last_ts),
      last_received = max(last_received, excluded.last_received)"""


_SEEN_UPSERT = """INSERT INTO seen
    (meter_id, kind, district, first_ts, last_ts, messages, last_received)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT(meter_id) DO UPDATE SET
      district = coalesce(excluded.district, seen.district),
      first_ts = min(seen.first_ts, excluded.first_ts),
      last_ts = max(seen.last_ts, excluded.last_ts),
      messages = seen.messages + excluded.messages,
      last_received = max(seen.last_received, excluded.last_received)"""


class SqliteState:
    """SQLite-backed state store.

    state = SqliteState(Path("data/state.sqlite"))
    state.upsert_meters(rows); state.list_meters(MeterFilter(kind="elec"), after=None, limit=100)
    """

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in _SCHEMA:
            self._db.execute(stmt)
        self._add_due_column()
        self._add_registry_columns()
        self._seen = SeenBuffer()  # meters seen, not yet in `seen` (see note_records)

    def health(self) -> StateHealth:
        """A local file: available while open."""
        return StateHealth(self.backend, True)

    def _add_due_column(self) -> None:
        """The derived due date as an indexed column (files from before it get it filled)."""
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(registry)")}
        if "due_on" not in cols:
            self._db.execute("ALTER TABLE registry ADD COLUMN due_on TEXT")
            found = self._db.execute(
                "SELECT meter_id, coalesce(verified_on, installed_on), period_years FROM registry "
                "WHERE period_years IS NOT NULL AND coalesce(verified_on, installed_on) IS NOT NULL"
            ).fetchall()
            due = [
                (add_years(date.fromisoformat(start), int(years)).isoformat(), meter)
                for meter, start, years in found
            ]
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE registry SET due_on = ? WHERE meter_id = ?", due)
            self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX IF NOT EXISTS registry_due ON registry (due_on)")

    def _add_registry_columns(self) -> None:
        """Registry columns added since a file was made (region, the feeder's topology): empty."""
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(registry)")}
        for column in COLUMNS:
            if column not in cols:
                self._db.execute(f"ALTER TABLE registry ADD COLUMN {column}")
        self._db.execute("CREATE INDEX IF NOT EXISTS registry_region ON registry (region)")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._seen:  # reads see every meter noted so far
                self._flush_seen_locked()
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- registry ----------------------------------------------------------

    def upsert_meters(self, rows: Iterable[MeterRow]) -> tuple[int, int]:
        """Insert or replace registry rows in one transaction; returns (added, updated)."""
        rows = list(rows)
        cols = ", ".join((*COLUMNS, "due_on"))
        sql = f"INSERT OR REPLACE INTO registry ({cols}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
        dumped = [row.as_dict() for row in rows]
        values = [tuple(d[c] for c in (*COLUMNS, "due_on")) for d in dumped]
        with self._lock:
            existing = {
                r[0]
                for chunk in _chunks([r.meter_id for r in rows], 500)
                for r in self._db.execute(
                    f"SELECT meter_id FROM registry WHERE meter_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            }
            self._db.execute("BEGIN")
            self._db.executemany(sql, values)
            self._db.execute(
                "INSERT INTO meta VALUES ('registry_version', 1) "
                "ON CONFLICT(key) DO UPDATE SET value = value + 1"
            )
            self._db.execute("COMMIT")
        updated = sum(1 for r in rows if r.meter_id in existing)
        return len(rows) - updated, updated

    def registry_version(self) -> int:
        """A number that changes whenever the registry does (in this or another process).

        Cheap, and it does not flush meters seen: the ingest worker asks once per batch.
        """
        with self._lock:
            found = self._db.execute(
                "SELECT value FROM meta WHERE key = 'registry_version'"
            ).fetchone()
        return int(found[0]) if found else 0

    def registry_districts(self) -> dict[str, str]:
        """Registered electricity meters → the district the registry puts them in."""
        rows = self._rows(
            "SELECT meter_id, district FROM registry "
            "WHERE kind = 'elec' AND district IS NOT NULL AND district != ''"
        )
        return {r[0]: r[1] for r in rows}

    def get_meter(self, meter_id: str) -> MeterRow | None:
        """The registry row of a meter, or None when unregistered."""
        found = self._rows(
            f"SELECT {', '.join(COLUMNS)} FROM registry WHERE meter_id = ?", [meter_id]
        )
        if not found:
            return None
        data = {c: v for c, v in zip(COLUMNS, found[0], strict=True) if v is not None}
        return MeterRow.model_validate(data)

    # -- telemetry presence ------------------------------------------------

    def note_seen(self, updates: Mapping[str, SeenUpdate]) -> None:
        """Record which meters sent telemetry (per meter: kind, district, span, count)."""
        self._seen.note_seen(updates)

    def note_records(self, records: Iterable[Record], received_at: float) -> None:
        """Record the meters of a batch of telemetry (the ingest worker's one pass per batch).

        Kept in memory until `flush_seen` (the worker calls it every few seconds and
        on stop; `close` and every read of this state flush first), so a meter sending
        every second costs one upsert per flush instead of one per message.
        """
        self._seen.note_records(records, received_at)

    def flush_seen(self) -> int:
        """Write what `note_*` gathered to the `seen` table; returns meters written."""
        with self._lock:
            return self._flush_seen_locked()

    def _flush_seen_locked(self) -> int:
        # Under self._lock: no two flushes interleave, so the upserts apply in order.
        taken = self._seen.take()
        if not taken:
            return 0
        values = [
            (m, u.kind, u.district or None, u.first_ts, u.last_ts, u.messages, u.received_at)
            for m, u in taken.items()
        ]
        try:
            self._db.execute("BEGIN")
            self._db.executemany(_SEEN_UPSERT, values)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._seen.put_back(taken)  # kept for the next flush
            raise
        return len(values)

    def seen(self, meter_id: str) -> dict[str, Any] | None:
        """Telemetry presence of one meter."""
        found = self._rows(
            "SELECT kind, district, first_ts, last_ts, messages FROM seen WHERE meter_id = ?",
            [meter_id],
        )
        if not found:
            return None
        kind, district, first_ts, last_ts, messages = found[0]
        return {
            "kind": kind,
            "district": district,
            "first_ts": first_ts,
            "last_ts": last_ts,
            "messages": messages,
        }

    def note_mismatches(self, found: Iterable[Mismatch]) -> None:
        """Count messages of registered meters under another district's topic."""
        values = [
            (m.meter, m.topic_district, m.registered_district, m.ts_ms, m.ts_ms, m.received_at)
            for m in found
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(_MISMATCH_UPSERT, values)
            self._db.execute("COMMIT")

    def mismatches(self, min_messages: int = 1) -> list[MismatchRow]:
        """Meters seen under a district the registry does not put them in."""
        rows = self._rows(
            "SELECT * FROM district_mismatches WHERE messages >= ? ORDER BY meter_id, topic_district",
            [min_messages],
        )
        return [MismatchRow(*r) for r in rows]

    def count_unregistered(self) -> int:
        """Meters that sent telemetry but are not in the registry."""
        return int(
            self._rows(
                "SELECT count(*) FROM seen WHERE meter_id NOT IN (SELECT meter_id FROM registry)"
            )[0][0]
        )

    # -- changed days and day summaries (incremental passes) ----------------

    def mark_days(self, days: Collection[tuple[str, int]]) -> None:
        """Mark (district, UTC day)s as written, under one new sequence number."""
        if not days:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO meta VALUES ('day_mark_seq', 1) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + 1"
                )
                (seq,) = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'day_mark_seq'"
                ).fetchone()
                self._db.executemany(
                    "INSERT INTO day_marks VALUES (?, ?, ?) "
                    "ON CONFLICT(district, day) DO UPDATE SET seq = excluded.seq",
                    [(d, day, seq) for d, day in sorted(days)],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def mark_sequence(self) -> int:
        """The sequence number of the newest mark (0 before any)."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key = 'day_mark_seq'").fetchone()
        return int(found[0]) if found else 0

    def marked_days(self, district: str, first: int, last: int) -> set[int]:
        """The district's marked days in [first, last]."""
        with self._lock:
            rows = self._db.execute(
                "SELECT day FROM day_marks WHERE district = ? AND day BETWEEN ? AND ?",
                (district, first, last),
            ).fetchall()
        return {int(r[0]) for r in rows}

    def day_summaries(self, district: str, first: int, last: int) -> dict[int, bytes]:
        """The district's stored day summaries in [first, last], by day."""
        with self._lock:
            rows = self._db.execute(
                "SELECT day, body FROM day_summaries WHERE district = ? AND day BETWEEN ? AND ?",
                (district, first, last),
            ).fetchall()
        return {int(day): bytes(body) for day, body in rows}

    def save_day_summaries(self, district: str, bodies: Mapping[int, bytes], upto: int) -> None:
        """Store day summaries read after mark `upto` and clear their marks ≤ `upto`."""
        if not bodies:
            return
        days = sorted(bodies)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO day_summaries VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(district, day) DO UPDATE SET upto = excluded.upto, "
                    "body = excluded.body WHERE excluded.upto >= day_summaries.upto",
                    [(district, day, upto, bodies[day]) for day in days],
                )
                self._db.executemany(
                    "DELETE FROM day_marks WHERE district = ? AND day = ? AND seq <= ?",
                    [(district, day, upto) for day in days],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def forget_days(self, before: int, taxi_before: int | None = None) -> int:
        """Drop summaries and marks of days before `before` (taxi keys': `taxi_before`)."""
        taxi = before if taxi_before is None else taxi_before
        gone = 0
        with self._lock:
            self._db.execute("BEGIN")
            for table in ("day_summaries", "day_marks"):
                for key, bound in ((f"NOT {TAXI_KEY_SQL}", before), (TAXI_KEY_SQL, taxi)):
                    n = self._db.execute(
                        f"DELETE FROM {table} WHERE day < ? AND {key}", (bound,)
                    ).rowcount
                    gone += n if table == "day_summaries" else 0
            self._db.execute("COMMIT")
        return gone

    # -- decisions ---------------------------------------------------------

    def decision(self, scope: str, subject: str) -> dict[str, Any] | None:
        """The stored decision JSON of a meter or lot, or None before the first evaluation."""
        found = self._rows(
            "SELECT body FROM decisions WHERE scope = ? AND subject = ?", [scope, subject]
        )
        return json.loads(found[0][0]) if found else None

    def save_decisions(self, scope: str, bodies: Iterable[dict[str, Any]]) -> None:
        """Upsert decision JSONs (scope `meter` or `lot`) in one transaction; a meter's
        estimated error joins its history (`error_history`)."""
        bodies_list = list(bodies)
        sql = """INSERT OR REPLACE INTO decisions
                 (subject, scope, kind, decision, state, as_of, rules_version, body)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
        rows = [
            (
                b["id"],
                scope,
                b["kind"],
                b["decision"],
                b["state"],
                b["as_of"],
                b["rules_version"],
                json.dumps(b, separators=(",", ":")),
            )
            for b in bodies_list
        ]
        history = error_rows(bodies_list) if scope == "meter" else []
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(sql, rows)
            if history:
                self._db.executemany(
                    "INSERT OR REPLACE INTO error_history VALUES (?, ?, ?, ?, ?, ?, ?)", history
                )
                oldest = (
                    date.fromisoformat(max(r[1] for r in history))
                    - timedelta(days=ERROR_HISTORY_DAYS)
                ).isoformat()
                self._db.execute("DELETE FROM error_history WHERE day < ?", (oldest,))
            self._db.execute("COMMIT")

    def error_history(self, meter_id: str, limit: int = ERROR_HISTORY_DAYS) -> list[ErrorPoint]:
        """A meter's estimated error per day of evaluation, oldest first (the last `limit`)."""
        rows = self._rows(
            "SELECT as_of, state, error_pct, low_pct, high_pct FROM error_history "
            "WHERE meter_id = ? ORDER BY day DESC LIMIT ?",
            [meter_id, limit],
        )
        return [ErrorPoint(*r) for r in reversed(rows)]

    def save_district(self, district: str, as_of: str, body: dict[str, Any]) -> None:
        """Store a district's latest energy-balance result."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO districts VALUES (?, ?, ?)",
                (district, as_of, json.dumps(body, separators=(",", ":"))),
            )

    def district(self, district: str) -> dict[str, Any] | None:
        """A district's latest energy-balance result."""
        found = self._rows("SELECT body FROM districts WHERE district = ?", [district])
        return json.loads(found[0][0]) if found else None

    def due_by(self, horizon: date, limit: int) -> tuple[list[DueMeter], int]:
        """(meter, kind, lot, due date) of the first `limit` meters due by `horizon`, and how many are."""
        found = self._rows(
            "SELECT meter_id, kind, lot, due_on FROM registry WHERE due_on <= ? "
            "ORDER BY due_on, meter_id LIMIT ?",
            [horizon.isoformat(), limit],
        )
        total = self._rows("SELECT count(*) FROM registry WHERE due_on <= ?", [horizon.isoformat()])
        rows = [DueMeter(m, kind, lot, date.fromisoformat(due)) for m, kind, lot, due in found]
        return rows, int(total[0][0])

    def list_districts(
        self, after: str | None, limit: int, gates_passed: bool | None = None
    ) -> list[dict[str, Any]]:
        """Evaluated districts by name after `after`: each one's latest result body."""
        sql = "SELECT body FROM districts WHERE district > ?"
        args: list[Any] = [after or ""]
        if gates_passed is not None:
            sql += " AND coalesce(json_extract(body, '$.gates.passed'), 0) = ?"
            args.append(int(gates_passed))
        found = self._rows(sql + " ORDER BY district LIMIT ?", [*args, limit])
        return [json.loads(r[0]) for r in found]

    def registry_rows(self, kind: str | None = None) -> list[MeterRow]:
        """Every registry row (of one kind)."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM registry"
        args: list[object] = []
        if kind is not None:
            sql += " WHERE kind = ?"
            args.append(kind)
        rows = self._rows(sql + " ORDER BY meter_id", args)
        return [
            MeterRow.model_validate(
                {c: v for c, v in zip(COLUMNS, r, strict=True) if v is not None}
            )
            for r in rows
        ]

    def all_seen(self, kind: str | None = None) -> dict[str, SeenMeter]:
        """Every meter that sent telemetry (of one kind): id → (kind, district, last event time)."""
        sql = "SELECT meter_id, kind, district, last_ts FROM seen"
        rows = self._rows(sql, []) if kind is None else self._rows(sql + " WHERE kind = ?", [kind])
        return {r[0]: SeenMeter(r[1], r[2], int(r[3])) for r in rows}

    def last_received(self) -> float | None:
        """Wall-clock time (epoch s) the newest telemetry message was received."""
        found = self._rows("SELECT max(last_received) FROM seen")
        return float(found[0][0]) if found and found[0][0] is not None else None

    def latest_event_ts(self) -> int | None:
        """Newest telemetry event time seen (the default `as_of`), never after it was received.

        Each meter's newest event time counts only up to the receive clock of its
        newest message: one meter with a clock in the future (from before ingest
        refused such timestamps, or within `ingest.max_future_s`) cannot pull every
        default evaluation and offline check after the present. Both numbers are
        stored, so this is a function of the state, not of when it is asked.
        """
        found = self._rows(
            "SELECT max(min(last_ts, CAST(last_received * 1000 AS INTEGER))) FROM seen"
        )
        return int(found[0][0]) if found and found[0][0] is not None else None

    def save_sample_results(self, lot: str, results: Iterable[SampleRow]) -> None:
        """Record laboratory results for drawn meters (a later result replaces an earlier one)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO sample_results VALUES (?, ?, ?, ?)",
                [(lot, m, e, int(p)) for m, e, p in results],
            )
            self._db.execute("COMMIT")

    def sample_results(self, lot: str) -> list[SampleRow]:
        """Laboratory results recorded for a lot."""
        rows = self._rows(
            "SELECT meter, error_pct, passed FROM sample_results WHERE lot = ? ORDER BY meter",
            [lot],
        )
        return [SampleRow(r[0], r[1], bool(r[2])) for r in rows]

    # -- work orders and tariff rollouts ------------------------------------

    def add_workorder(self, meter: str, start_ms: int, end_ms: int, reason: str) -> int:
        """Record an authorised intervention; the same one again returns its first id."""
        with self._lock:
            found = self._db.execute(
                "SELECT id FROM workorders WHERE meter = ? AND start_ms = ? AND end_ms = ? "
                "AND reason = ? ORDER BY id LIMIT 1",
                (meter, start_ms, end_ms, reason),
            ).fetchone()
            if found is not None:
                return int(found[0])
            cur = self._db.execute(
                "INSERT INTO workorders (meter, start_ms, end_ms, reason) VALUES (?, ?, ?, ?)",
                (meter, start_ms, end_ms, reason),
            )
            return int(cur.lastrowid or 0)

    def workorders(
        self, meter: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[WorkOrderRow]:
        """Work orders (of one meter), by id: (id, meter, start_ms, end_ms, reason, created_at)."""
        sql = "SELECT id, meter, start_ms, end_ms, reason, created_at FROM workorders WHERE id > ?"
        args: list[object] = [after_id]
        if meter is not None:
            sql += " AND meter = ?"
            args.append(meter)
        rows = self._rows(sql + " ORDER BY id LIMIT ?", [*args, limit])
        return [WorkOrderRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

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
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO tariffs (version, body, effective_from_ms, deadline_ms, "
                "meters) VALUES (?, ?, ?, ?, ?)",
                (version, json.dumps(body), effective_from_ms, deadline_ms, json.dumps(meters)),
            )
            return cur.rowcount == 1

    def tariff(self, version: str) -> TariffRollout | None:
        """A rollout: (body, effective_from_ms, deadline_ms, meters)."""
        found = self._rows(
            "SELECT body, effective_from_ms, deadline_ms, meters FROM tariffs WHERE version = ?",
            [version],
        )
        if not found:
            return None
        body, eff, deadline, meters = found[0]
        return TariffRollout(json.loads(body), int(eff), int(deadline), json.loads(meters))

    def tariff_bodies(self) -> dict[str, dict[str, Any]]:
        """Every rolled-out tariff body by version (they join config/tariffs.yaml)."""
        return {r[0]: json.loads(r[1]) for r in self._rows("SELECT version, body FROM tariffs")}

    # -- fleet summaries (web overview) -------------------------------------

    def kind_counts(self) -> dict[str, int]:
        """Meters per kind: registry ∪ meters seen."""
        rows = self._rows("""SELECT kind, count(*) FROM (
            SELECT meter_id, kind FROM registry UNION SELECT meter_id, kind FROM seen)
            GROUP BY kind ORDER BY kind""")
        return {r[0]: int(r[1]) for r in rows}

    def decision_counts(self) -> list[dict[str, Any]]:
        """Meters per (kind, state, decision) of their current decisions."""
        rows = self._rows("""SELECT kind, state, decision, count(*) FROM decisions
            WHERE scope = 'meter' GROUP BY kind, state, decision ORDER BY kind, state, decision""")
        return [{"kind": r[0], "state": r[1], "decision": r[2], "n": int(r[3])} for r in rows]

    def decisions_where(self, scope: str, decision: str, limit: int = 100) -> list[dict[str, Any]]:
        """Stored decision JSONs of one scope with one decision."""
        rows = self._rows(
            "SELECT body FROM decisions WHERE scope = ? AND decision = ? ORDER BY subject LIMIT ?",
            [scope, decision, limit],
        )
        return [json.loads(r[0]) for r in rows]

    def tariff_versions(self) -> list[str]:
        """Rolled-out tariff versions, newest first."""
        return [
            r[0]
            for r in self._rows("SELECT version FROM tariffs ORDER BY created_at DESC, version")
        ]

    # -- the fleet list ----------------------------------------------------

    def list_meters(self, flt: MeterFilter, after: str | None, limit: int) -> list[MeterSummary]:
        """Registry ∪ meters seen, filtered, ordered by meter id, keyset-paginated."""
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if after is not None:
            where.append("ids.meter_id > ?")
            args.append(after)
        for column, value in (
            ("coalesce(r.kind, s.kind)", flt.kind),
            ("coalesce(r.district, s.district)", flt.district),
            ("r.lot", flt.lot),
            ("d.state", flt.state),
            ("d.decision", flt.decision),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if flt.registered is not None:
            where.append("r.meter_id IS NOT NULL" if flt.registered else "r.meter_id IS NULL")
        if flt.region is not None:
            # An unregistered meter is in the region of the district it was heard in.
            where.append(
                "coalesce(r.region, (SELECT x.region FROM registry x WHERE x.district = "
                "coalesce(r.district, s.district) AND x.region IS NOT NULL LIMIT 1), ?) = ?"
            )
            args += [DEFAULT_REGION, flt.region]
        sql = f"""
            WITH ids AS (SELECT meter_id FROM registry UNION SELECT meter_id FROM seen)
            SELECT ids.meter_id, coalesce(r.kind, s.kind), r.meter_id IS NOT NULL,
                   coalesce(r.district, s.district), r.lot, s.last_ts, coalesce(s.messages, 0),
                   d.state, d.decision, json_extract(d.body, '$.evidence.error_pct'),
                   json_extract(d.body, '$.reasons[0]')
            FROM ids
            LEFT JOIN registry r ON r.meter_id = ids.meter_id
            LEFT JOIN seen s ON s.meter_id = ids.meter_id
            LEFT JOIN decisions d ON d.scope = 'meter' AND d.subject = ids.meter_id
            WHERE {" AND ".join(where)}
            ORDER BY ids.meter_id LIMIT ?"""
        args.append(limit)
        return [
            MeterSummary(
                row[0],
                row[1],
                bool(row[2]),
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                json.loads(row[10]) if row[10] else None,
            )
            for row in self._rows(sql, args)
        ]

    def close(self) -> None:
        """Write the meters seen still in memory, then close the database."""
        with self._lock:
            try:
                self._flush_seen_locked()
            finally:
                self._db.close()


def error_rows(bodies: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(meter, day, as_of, state, error, low, high) of each decision; no error when the
    estimate could not carry a judgement (the chart shows the state, not a guess)."""
    out = []
    for b in bodies:
        evidence = b.get("evidence") or {}
        if "error_pct" not in evidence:
            continue  # a kind without an error estimate
        ci = evidence.get("error_ci_pct") or [None, None]
        as_of = str(b["as_of"])
        out.append((b["id"], as_of[:10], as_of, b["state"], evidence["error_pct"], *ci[:2]))
    return out


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
