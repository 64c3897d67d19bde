"""The service's state in PostgreSQL, shared by every worker: `core.ports.StateStore`.

Answers exactly what the embedded `store.state.SqliteState` answers (one contract suite
runs over both). Every write is idempotent or merges: an upsert replaces a row with the
same content, counters add (a flush of meters seen carries a sequence number, so a
flush retried after an unknown outcome is not counted twice), and writes that touch
many rows lock them in key order, so two workers never deadlock on each other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from psycopg import sql

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
    StateUnavailable,
    TariffRollout,
    WorkOrderRow,
)
from monitor.core.registry import COLUMNS, DEFAULT_REGION, MeterRow
from monitor.core.schema import Record
from monitor.store.postgres.db import Database
from monitor.store.seen import SeenBuffer
from monitor.store.state import ERROR_HISTORY_DAYS, error_rows

_REGISTRY_COLS = (*COLUMNS, "due_on")
# A decision body's estimated error and its interval, as error_history columns.
ERROR_COLUMNS = (
    "(body::jsonb #>> '{evidence,error_pct}')::float8, "
    "(body::jsonb #>> '{evidence,error_ci_pct,0}')::float8, "
    "(body::jsonb #>> '{evidence,error_ci_pct,1}')::float8"
)
_ERROR_UPSERT = """INSERT INTO error_history VALUES (%s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (meter_id, day) DO UPDATE SET as_of = excluded.as_of, state = excluded.state,
      error_pct = excluded.error_pct, low_pct = excluded.low_pct, high_pct = excluded.high_pct"""
_SEEN_UPSERT = """INSERT INTO seen AS s
    (meter_id, kind, district, first_ts, last_ts, messages, last_received)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (meter_id) DO UPDATE SET
      district = coalesce(excluded.district, s.district),
      first_ts = least(s.first_ts, excluded.first_ts),
      last_ts = greatest(s.last_ts, excluded.last_ts),
      messages = s.messages + excluded.messages,
      last_received = greatest(s.last_received, excluded.last_received)"""
_MISMATCH_UPSERT = """INSERT INTO district_mismatches AS d VALUES (%s, %s, %s, 1, %s, %s, %s)
    ON CONFLICT (meter_id, topic_district) DO UPDATE SET
      registered_district = excluded.registered_district,
      messages = d.messages + 1,
      first_ts = least(d.first_ts, excluded.first_ts),
      last_ts = greatest(d.last_ts, excluded.last_ts),
      last_received = greatest(d.last_received, excluded.last_received)"""


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def _meter_row(values: Iterable[Any]) -> MeterRow:
    return MeterRow.model_validate(
        {c: v for c, v in zip(COLUMNS, values, strict=True) if v is not None}
    )


class PostgresState:
    """The state of every worker in one PostgreSQL database.

    state = PostgresState(Database("postgresql://…/monitor"))

    `writer` names this process in the flushes of meters seen (a random suffix is added).
    """

    backend = "postgresql"

    def __init__(self, db: Database, writer: str | None = None) -> None:
        self._db = db
        self._seen = SeenBuffer()
        # Unique per process: a restarted worker numbers its flushes from 1 again.
        self._writer = f"{writer or 'state'}:{uuid.uuid4().hex[:12]}"
        self._flushes = itertools.count(1)
        self._flush_lock = threading.Lock()
        self._unsent: tuple[int, dict[str, SeenUpdate]] | None = None

    @property
    def database(self) -> Database:
        return self._db

    def health(self) -> StateHealth:
        return self._db.health()

    def _rows(self, query: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        if self._seen or self._unsent:  # reads see every meter noted so far
            self.flush_seen()
        return self._db.rows(query, list(args))

    # -- registry -----------------------------------------------------------

    def upsert_meters(self, rows: Iterable[MeterRow]) -> tuple[int, int]:
        """Insert or replace registry rows in one transaction; returns (added, updated)."""
        rows = sorted(rows, key=lambda r: r.meter_id)  # lock order: no deadlock
        values = [tuple(r.as_dict()[c] for c in _REGISTRY_COLS) for r in rows]
        cols = ", ".join(_REGISTRY_COLS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _REGISTRY_COLS[1:])
        insert = (
            f"INSERT INTO registry AS r ({cols}) VALUES ({', '.join(['%s'] * len(_REGISTRY_COLS))}) "
            f"ON CONFLICT (meter_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at"
        )
        with self._db.transaction() as conn:
            existing = {
                r[0]
                for r in conn.execute(
                    "SELECT meter_id FROM registry WHERE meter_id = ANY(%s) FOR UPDATE",
                    ([r.meter_id for r in rows],),
                )
            }
            with conn.cursor() as cur:
                cur.executemany(insert, values)
            conn.execute("SELECT nextval('registry_version')")
        updated = sum(1 for r in rows if r.meter_id in existing)
        return len(rows) - updated, updated

    def registry_version(self) -> int:
        """A number that changes whenever the registry does (in any worker); cheap."""
        found = self._db.one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM registry_version"
        )
        return int(found[0]) if found else 0

    def registry_districts(self) -> dict[str, str]:
        rows = self._db.rows(
            "SELECT meter_id, district FROM registry "
            "WHERE kind = 'elec' AND district IS NOT NULL AND district <> ''"
        )
        return {r[0]: r[1] for r in rows}

    def get_meter(self, meter_id: str) -> MeterRow | None:
        found = self._rows(
            f"SELECT {', '.join(COLUMNS)} FROM registry WHERE meter_id = %s", [meter_id]
        )
        return _meter_row(found[0]) if found else None

    def registry_rows(self, kind: str | None = None) -> list[MeterRow]:
        query = f"SELECT {', '.join(COLUMNS)} FROM registry"
        args: list[Any] = []
        if kind is not None:
            query += " WHERE kind = %s"
            args.append(kind)
        return [_meter_row(r) for r in self._rows(query + " ORDER BY meter_id", args)]

    def due_by(self, horizon: date, limit: int) -> tuple[list[DueMeter], int]:
        day = horizon.isoformat()
        found = self._rows(
            "SELECT meter_id, kind, lot, due_on FROM registry WHERE due_on <= %s "
            "ORDER BY due_on, meter_id LIMIT %s",
            [day, limit],
        )
        total = self._rows("SELECT count(*) FROM registry WHERE due_on <= %s", [day])
        rows = [DueMeter(m, k, lot, date.fromisoformat(due)) for m, k, lot, due in found]
        return rows, int(total[0][0])

    # -- telemetry presence ---------------------------------------------------

    def note_seen(self, updates: Mapping[str, SeenUpdate]) -> None:
        self._seen.note_seen(updates)

    def note_records(self, records: Iterable[Record], received_at: float) -> None:
        self._seen.note_records(records, received_at)

    def flush_seen(self) -> int:
        """Write what `note_*` gathered (added to what other workers wrote); meters written.

        Each flush is numbered and recorded under (writer, number) in its transaction.
        A flush that failed is retried as it was, under its number, before anything
        newer: when its commit had in fact gone through (the connection dropped on the
        way back), the retry finds its record and adds nothing twice.
        """
        written = 0
        with self._flush_lock:
            while True:
                if self._unsent is None:
                    taken = self._seen.take()
                    if not taken:
                        return written
                    self._unsent = (next(self._flushes), taken)
                seq, taken = self._unsent
                self.write_seen(seq, taken)
                self._unsent = None
                written += len(taken)

    def write_seen(self, seq: int, taken: Mapping[str, SeenUpdate]) -> bool:
        """One numbered flush; False when this writer's flush `seq` was already written."""
        values = [
            (m, u.kind, u.district or None, u.first_ts, u.last_ts, u.messages, u.received_at)
            for m, u in sorted(taken.items())  # key order: concurrent flushes never deadlock
        ]
        with self._db.transaction() as conn:
            fresh = conn.execute(
                "INSERT INTO seen_flushes (writer, seq) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING RETURNING seq",
                (self._writer, seq),
            ).fetchone()
            if fresh is None:
                return False
            with conn.cursor() as cur:
                cur.executemany(_SEEN_UPSERT, values)
            # Only the newest number of a writer matters (a retry is of the newest).
            conn.execute(
                "DELETE FROM seen_flushes WHERE writer = %s AND seq < %s", (self._writer, seq)
            )
            if seq % 1000 == 1:  # writers of processes long gone
                conn.execute("DELETE FROM seen_flushes WHERE at < now() - interval '7 days'")
        return True

    def seen(self, meter_id: str) -> dict[str, Any] | None:
        found = self._rows(
            "SELECT kind, district, first_ts, last_ts, messages FROM seen WHERE meter_id = %s",
            [meter_id],
        )
        if not found:
            return None
        kind, district, first_ts, last_ts, messages = found[0]
        return {
            "kind": kind,
            "district": district,
            "first_ts": int(first_ts),
            "last_ts": int(last_ts),
            "messages": int(messages),
        }

    def count_unregistered(self) -> int:
        found = self._rows(
            "SELECT count(*) FROM seen s WHERE NOT EXISTS "
            "(SELECT 1 FROM registry r WHERE r.meter_id = s.meter_id)"
        )
        return int(found[0][0])

    def all_seen(self, kind: str | None = None) -> dict[str, SeenMeter]:
        query = "SELECT meter_id, kind, district, last_ts FROM seen"
        rows = self._rows(query) if kind is None else self._rows(query + " WHERE kind = %s", [kind])
        return {r[0]: SeenMeter(r[1], r[2], int(r[3])) for r in rows}

    def last_received(self) -> float | None:
        found = self._rows("SELECT max(last_received) FROM seen")
        return float(found[0][0]) if found and found[0][0] is not None else None

    def latest_event_ts(self) -> int | None:
        """Newest event time seen, each meter's counted only up to its receive clock (see
        `SqliteState.latest_event_ts`)."""
        found = self._rows(
            "SELECT max(least(last_ts, CAST(trunc(last_received * 1000) AS bigint))) FROM seen"
        )
        return int(found[0][0]) if found and found[0][0] is not None else None

    # -- district mismatches ----------------------------------------------------

    def note_mismatches(self, found: Iterable[Mismatch]) -> None:
        values = sorted(
            (m.meter, m.topic_district, m.registered_district, m.ts_ms, m.ts_ms, m.received_at)
            for m in found
        )
        if not values:
            return
        with self._db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(_MISMATCH_UPSERT, values)

    def mismatches(self, min_messages: int = 1) -> list[MismatchRow]:
        rows = self._rows(
            "SELECT meter_id, topic_district, registered_district, messages, first_ts, "
            "last_ts, last_received FROM district_mismatches WHERE messages >= %s "
            "ORDER BY meter_id, topic_district",
            [min_messages],
        )
        return [
            MismatchRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), float(r[6]))
            for r in rows
        ]

    # -- decisions and districts --------------------------------------------------

    def decision(self, scope: str, subject: str) -> dict[str, Any] | None:
        found = self._rows(
            "SELECT body FROM decisions WHERE scope = %s AND subject = %s", [scope, subject]
        )
        return json.loads(found[0][0]) if found else None

    def save_decisions(self, scope: str, bodies: Iterable[dict[str, Any]]) -> None:
        """Upsert decision JSONs in one transaction; a meter's estimated error joins its
        history (`error_history`, as the embedded store keeps it)."""
        bodies = list(bodies)
        rows = sorted(
            (
                b["id"],
                scope,
                b["kind"],
                b["decision"],
                b["state"],
                b["as_of"],
                b["rules_version"],
                _dumps(b),
            )
            for b in bodies
        )
        if not rows:
            return
        history = sorted(error_rows(bodies)) if scope == "meter" else []
        with self._db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO decisions (subject, scope, kind, decision, state, as_of, "
                "rules_version, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (scope, subject) DO UPDATE SET kind = excluded.kind, "
                "decision = excluded.decision, state = excluded.state, as_of = excluded.as_of, "
                "rules_version = excluded.rules_version, body = excluded.body",
                rows,
            )
            if history:
                cur.executemany(_ERROR_UPSERT, history)
                oldest = date.fromisoformat(max(r[1] for r in history)) - timedelta(
                    days=ERROR_HISTORY_DAYS
                )
                cur.execute("DELETE FROM error_history WHERE day < %s", (oldest.isoformat(),))

    def error_history(self, meter_id: str, limit: int = ERROR_HISTORY_DAYS) -> list[ErrorPoint]:
        """A meter's estimated error per day of evaluation, oldest first (the last `limit`)."""
        rows = self._rows(
            "SELECT as_of, state, error_pct, low_pct, high_pct FROM error_history "
            "WHERE meter_id = %s ORDER BY day DESC LIMIT %s",
            [meter_id, limit],
        )
        return [ErrorPoint(*r) for r in reversed(rows)]

    def decisions_where(self, scope: str, decision: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT body FROM decisions WHERE scope = %s AND decision = %s "
            "ORDER BY subject LIMIT %s",
            [scope, decision, limit],
        )
        return [json.loads(r[0]) for r in rows]

    def decision_counts(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT kind, state, decision, count(*) FROM decisions WHERE scope = 'meter' "
            "GROUP BY kind, state, decision ORDER BY kind, state, decision"
        )
        return [{"kind": r[0], "state": r[1], "decision": r[2], "n": int(r[3])} for r in rows]

    def save_district(self, district: str, as_of: str, body: dict[str, Any]) -> None:
        passed = bool((body.get("gates") or {}).get("passed"))
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO districts VALUES (%s, %s, %s, %s) ON CONFLICT (district) DO UPDATE "
                "SET as_of = excluded.as_of, body = excluded.body, "
                "gates_passed = excluded.gates_passed",
                (district, as_of, _dumps(body), passed),
            )

    def district(self, district: str) -> dict[str, Any] | None:
        found = self._rows("SELECT body FROM districts WHERE district = %s", [district])
        return json.loads(found[0][0]) if found else None

    def list_districts(
        self, after: str | None, limit: int, gates_passed: bool | None = None
    ) -> list[dict[str, Any]]:
        query = "SELECT body FROM districts WHERE district > %s"
        args: list[Any] = [after or ""]
        if gates_passed is not None:
            query += " AND gates_passed = %s"
            args.append(gates_passed)
        found = self._rows(query + " ORDER BY district LIMIT %s", [*args, limit])
        return [json.loads(r[0]) for r in found]

    # -- lot samples -------------------------------------------------------------

    def save_sample_results(self, lot: str, results: Iterable[SampleRow]) -> None:
        values = sorted((lot, m, e, bool(p)) for m, e, p in results)
        if not values:
            return
        with self._db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sample_results VALUES (%s, %s, %s, %s) ON CONFLICT (lot, meter) "
                "DO UPDATE SET error_pct = excluded.error_pct, passed = excluded.passed",
                values,
            )

    def sample_results(self, lot: str) -> list[SampleRow]:
        rows = self._rows(
            "SELECT meter, error_pct, passed FROM sample_results WHERE lot = %s ORDER BY meter",
            [lot],
        )
        return [SampleRow(r[0], r[1], bool(r[2])) for r in rows]

    # -- work orders and tariff rollouts --------------------------------------------

    def add_workorder(self, meter: str, start_ms: int, end_ms: int, reason: str) -> int:
        """Record an authorised intervention; the same one again returns its first id."""
        with self._db.transaction() as conn:
            found = conn.execute(
                "INSERT INTO workorders (meter, start_ms, end_ms, reason) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (meter, start_ms, end_ms, reason) "
                "DO NOTHING RETURNING id",
                (meter, start_ms, end_ms, reason),
            ).fetchone()
            if found is None:
                found = conn.execute(
                    "SELECT id FROM workorders WHERE meter = %s AND start_ms = %s "
                    "AND end_ms = %s AND reason = %s",
                    (meter, start_ms, end_ms, reason),
                ).fetchone()
        assert found is not None
        return int(found[0])

    def workorders(
        self, meter: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[WorkOrderRow]:
        query = (
            "SELECT id, meter, start_ms, end_ms, reason, created_at FROM workorders WHERE id > %s"
        )
        args: list[Any] = [after_id]
        if meter is not None:
            query += " AND meter = %s"
            args.append(meter)
        rows = self._rows(query + " ORDER BY id LIMIT %s", [*args, limit])
        return [WorkOrderRow(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], r[5]) for r in rows]

    def save_tariff(
        self,
        version: str,
        body: dict[str, Any],
        effective_from_ms: int,
        deadline_ms: int,
        meters: list[str],
    ) -> bool:
        with self._db.transaction() as conn:
            found = conn.execute(
                "INSERT INTO tariffs (version, body, effective_from_ms, deadline_ms, meters) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING RETURNING version",
                (version, json.dumps(body), effective_from_ms, deadline_ms, json.dumps(meters)),
            ).fetchone()
        return found is not None

    def tariff(self, version: str) -> TariffRollout | None:
        found = self._rows(
            "SELECT body, effective_from_ms, deadline_ms, meters FROM tariffs WHERE version = %s",
            [version],
        )
        if not found:
            return None
        body, eff, deadline, meters = found[0]
        return TariffRollout(json.loads(body), int(eff), int(deadline), json.loads(meters))

    def tariff_bodies(self) -> dict[str, dict[str, Any]]:
        return {r[0]: json.loads(r[1]) for r in self._rows("SELECT version, body FROM tariffs")}

    def tariff_versions(self) -> list[str]:
        rows = self._rows("SELECT version FROM tariffs ORDER BY created_at DESC, version")
        return [r[0] for r in rows]

    # -- fleet summaries -------------------------------------------------------------

    def kind_counts(self) -> dict[str, int]:
        rows = self._rows(
            "SELECT kind, count(*) FROM (SELECT meter_id, kind FROM registry "
            "UNION SELECT meter_id, kind FROM seen) ids GROUP BY kind ORDER BY kind"
        )
        return {r[0]: int(r[1]) for r in rows}

    def list_meters(self, flt: MeterFilter, after: str | None, limit: int) -> list[MeterSummary]:
        where: list[sql.Composable] = [sql.SQL("true")]
        args: list[Any] = []
        if after is not None:
            where.append(sql.SQL("ids.meter_id > %s"))
            args.append(after)
        for column, value in (
            ("coalesce(r.kind, s.kind)", flt.kind),
            ("coalesce(r.district, s.district)", flt.district),
            ("r.lot", flt.lot),
            ("d.state", flt.state),
            ("d.decision", flt.decision),
        ):
            if value is not None:
                where.append(sql.SQL(f"{column} = %s"))
                args.append(value)
        if flt.registered is not None:
            where.append(
                sql.SQL("r.meter_id IS NOT NULL" if flt.registered else "r.meter_id IS NULL")
            )
        if flt.region is not None:
            # An unregistered meter is in the region of the district it was heard in.
            where.append(
                sql.SQL(
                    "coalesce(r.region, (SELECT x.region FROM registry x WHERE x.district = "
                    "coalesce(r.district, s.district) AND x.region IS NOT NULL LIMIT 1), %s) = %s"
                )
            )
            args += [DEFAULT_REGION, flt.region]
        query = sql.SQL(
            """WITH ids AS (SELECT meter_id FROM registry UNION SELECT meter_id FROM seen)
            SELECT ids.meter_id, coalesce(r.kind, s.kind), r.meter_id IS NOT NULL,
                   coalesce(r.district, s.district), r.lot, s.last_ts,
                   coalesce(s.messages, 0), d.state, d.decision,
                   (d.body::json #>> '{{evidence,error_pct}}')::float8,
                   d.body::json #> '{{reasons,0}}'
            FROM ids
            LEFT JOIN registry r ON r.meter_id = ids.meter_id
            LEFT JOIN seen s ON s.meter_id = ids.meter_id
            LEFT JOIN decisions d ON d.scope = 'meter' AND d.subject = ids.meter_id
            WHERE {where} ORDER BY ids.meter_id LIMIT %s"""
        ).format(where=sql.SQL(" AND ").join(where))
        args.append(limit)
        if self._seen or self._unsent:
            self.flush_seen()
        with self._db.connection() as conn:
            rows = conn.execute(query, args).fetchall()
        return [
            MeterSummary(
                r[0],
                r[1],
                bool(r[2]),
                r[3],
                r[4],
                None if r[5] is None else int(r[5]),
                int(r[6]),
                r[7],
                r[8],
                r[9],
                r[10],
            )
            for r in rows
        ]

    # -- changed days and day summaries (incremental passes) ----------------

    def mark_days(self, days: Collection[tuple[str, int]]) -> None:
        """Mark (district, UTC day)s as written, under one new sequence number."""
        if not days:
            return
        with self._db.transaction() as conn:
            found = conn.execute(
                "UPDATE day_mark_seq SET value = value + 1 WHERE id = 1 RETURNING value"
            ).fetchone()
            seq = int(found[0]) if found else 0
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO day_marks VALUES (%s, %s, %s) "
                    "ON CONFLICT (district, day) DO UPDATE SET seq = excluded.seq",
                    [(d, day, seq) for d, day in sorted(days)],
                )

    def mark_sequence(self) -> int:
        found = self._db.one("SELECT value FROM day_mark_seq WHERE id = 1")
        return int(found[0]) if found else 0

    def marked_days(self, district: str, first: int, last: int) -> set[int]:
        rows = self._db.rows(
            "SELECT day FROM day_marks WHERE district = %s AND day BETWEEN %s AND %s",
            [district, first, last],
        )
        return {int(r[0]) for r in rows}

    def day_summaries(self, district: str, first: int, last: int) -> dict[int, bytes]:
        rows = self._db.rows(
            "SELECT day, body FROM day_summaries WHERE district = %s AND day BETWEEN %s AND %s",
            [district, first, last],
        )
        return {int(day): bytes(body) for day, body in rows}

    def save_day_summaries(self, district: str, bodies: Mapping[int, bytes], upto: int) -> None:
        if not bodies:
            return
        days = sorted(bodies)
        with self._db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO day_summaries AS s VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (district, day) DO UPDATE SET upto = excluded.upto, "
                "body = excluded.body WHERE excluded.upto >= s.upto",
                [(district, day, upto, bodies[day]) for day in days],
            )
            cur.executemany(
                "DELETE FROM day_marks WHERE district = %s AND day = %s AND seq <= %s",
                [(district, day, upto) for day in days],
            )

    def forget_days(self, before: int, taxi_before: int | None = None) -> int:
        taxi = before if taxi_before is None else taxi_before
        gone = 0
        with self._db.transaction() as conn:
            for table in ("day_summaries", "day_marks"):
                for key, bound in ((f"NOT {TAXI_KEY_SQL}", before), (TAXI_KEY_SQL, taxi)):
                    n = conn.execute(
                        f"DELETE FROM {table} WHERE day < %s AND {key}",
                        (bound,),
                    ).rowcount
                    gone += n if table == "day_summaries" else 0
        return gone

    def close(self) -> None:
        """Write the meters seen still in memory (when the database is there)."""
        # When it is not, nothing else can be done with them; the telemetry is stored.
        with contextlib.suppress(StateUnavailable):
            self.flush_seen()
