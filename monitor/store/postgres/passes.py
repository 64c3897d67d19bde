"""Evaluation passes split between the workers of a cluster: `core.ports.PassBoard`.

A pass is a row of `passes`; its partitions (stage 1: groups of districts and the taxi
fleet; stage 2: groups of lots; stage 3: the finish) are rows of `pass_partitions`
that workers claim with `FOR UPDATE SKIP LOCKED` and a lease (`lease_until`, on the
database's clock, so workers' clocks need not agree) renewed by a heartbeat. A stage's
partitions are claimable once every partition of the stages before it is done. A
partition's results are staged (`pass_decisions`, `pass_districts`) in the transaction
that marks it done by its holder only, so a worker that lost its lease stages nothing,
and one killed mid-partition leaves it to be claimed again when its lease runs out.
No advisory locks: they belong to a session, which a transaction pooler does not keep.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from monitor.core.decision import SEVERITY_RANK
from monitor.core.ports import (
    LeaseLost,
    Partition,
    PassTicket,
    PlannedPartition,
    StagedDecision,
    StagedDistrict,
)
from monitor.store.postgres.db import Database
from monitor.store.postgres.state import ERROR_COLUMNS
from monitor.store.state import ERROR_HISTORY_DAYS

_PASS = "SELECT id, key, as_of_ms, rules_version, status, summary, error FROM passes"
# Staging of the newest passes is kept (a joining worker reads its pass's decisions).
_KEEP_PASSES = 3


def _ticket(row: Sequence[Any]) -> PassTicket:
    return PassTicket(
        int(row[0]),
        row[1],
        int(row[2]),
        row[3],
        row[4],
        json.loads(row[5]) if row[5] else None,
        row[6],
    )


INFO = SEVERITY_RANK["info"]


def alerting(body: dict[str, Any]) -> bool:
    """A decision with a reason that raises an alert (`alerts.book.conditions_of`)."""
    return any(SEVERITY_RANK[r.get("severity", "info")] > INFO for r in body.get("reasons", []))


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


class PostgresPasses:
    """The pass board in the shared database.

    passes = PostgresPasses(db)
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- passes ---------------------------------------------------------------

    def open_pass(
        self,
        key: str | None,
        as_of: Callable[[], int | None],
        rules_version: str,
        plan: Callable[[int], list[PlannedPartition]],
        owner: str,
    ) -> PassTicket | None:
        with self._db.transaction() as conn:
            # One opener at a time: the pass of a cron slot is created once, and a pass
            # is planned while no other opener can start a second one.
            conn.execute("LOCK TABLE passes IN SHARE ROW EXCLUSIVE MODE")
            if key is not None:
                found = conn.execute(f"{_PASS} WHERE key = %s", (key,)).fetchone()
                if found is not None:
                    return _ticket(found)
            running = conn.execute(
                f"{_PASS} WHERE status = 'running' ORDER BY id LIMIT 1"
            ).fetchone()
            if running is not None:
                return _ticket(running)  # joined, or helped to its end before ours
            as_of_ms = as_of()
            if as_of_ms is None:
                return None
            row = conn.execute(
                "INSERT INTO passes (key, as_of_ms, rules_version, created_by) "
                "VALUES (%s, %s, %s, %s) RETURNING id, key, as_of_ms, rules_version, status, "
                "summary, error",
                (key, as_of_ms, rules_version, owner),
            ).fetchone()
            assert row is not None
            parts = plan(as_of_ms)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pass_partitions (pass_id, stage, name, items) "
                    "VALUES (%s, %s, %s, %s)",
                    [(row[0], p.stage, p.name, _dumps(p.items)) for p in parts],
                )
            return _ticket(row)

    def get_pass(self, pass_id: int) -> PassTicket:
        found = self._db.one(f"{_PASS} WHERE id = %s", (pass_id,))
        if found is None:
            raise KeyError(pass_id)
        return _ticket(found)

    def running_pass(self) -> PassTicket | None:
        """The pass running now, if any (a worker with nothing to do may help it)."""
        found = self._db.one(f"{_PASS} WHERE status = 'running' ORDER BY id LIMIT 1")
        return _ticket(found) if found is not None else None

    # -- partitions -------------------------------------------------------------

    def claim(self, pass_id: int, owner: str, lease_s: float) -> Partition | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                """UPDATE pass_partitions SET owner = %s,
                      lease_until = now() + make_interval(secs => %s), attempts = attempts + 1
                WHERE (pass_id, stage, name) = (
                    SELECT p.pass_id, p.stage, p.name FROM pass_partitions p
                    WHERE p.pass_id = %s AND p.status = 'todo'
                      AND (p.lease_until IS NULL OR p.lease_until < now())
                      AND NOT EXISTS (
                          SELECT 1 FROM pass_partitions q
                          WHERE q.pass_id = p.pass_id AND q.stage < p.stage
                            AND q.status <> 'done')
                      AND EXISTS (
                          SELECT 1 FROM passes r WHERE r.id = p.pass_id
                            AND r.status = 'running')
                    ORDER BY p.stage, p.name LIMIT 1
                    FOR UPDATE OF p SKIP LOCKED)
                RETURNING pass_id, stage, name, items""",
                (owner, lease_s, pass_id),
            ).fetchone()
        if row is None:
            return None
        return Partition(int(row[0]), int(row[1]), row[2], json.loads(row[3]))

    def renew(self, part: Partition, owner: str, lease_s: float) -> bool:
        with self._db.connection() as conn:
            done = conn.execute(
                "UPDATE pass_partitions SET lease_until = now() + make_interval(secs => %s) "
                "WHERE pass_id = %s AND stage = %s AND name = %s AND owner = %s "
                "AND status = 'todo'",
                (lease_s, part.pass_id, part.stage, part.name, owner),
            ).rowcount
        return done == 1

    @contextmanager
    def completing(self, part: Partition, owner: str) -> Iterator[None]:
        with self._db.transaction() as conn:
            # Taken first: the row stays ours (no one can claim it) until we commit.
            held = conn.execute(
                "SELECT 1 FROM pass_partitions WHERE pass_id = %s AND stage = %s AND name = %s "
                "AND owner = %s AND status = 'todo' FOR UPDATE",
                (part.pass_id, part.stage, part.name, owner),
            ).fetchone()
            if held is None:
                raise LeaseLost(f"partition {part.stage}/{part.name} is no longer {owner}'s")
            yield
            conn.execute(
                "UPDATE pass_partitions SET status = 'done', done_by = %s, owner = NULL, "
                "lease_until = NULL WHERE pass_id = %s AND stage = %s AND name = %s",
                (owner, part.pass_id, part.stage, part.name),
            )

    def release(self, part: Partition, owner: str, error: str, max_attempts: int) -> None:
        with self._db.transaction() as conn:
            found = conn.execute(
                "UPDATE pass_partitions SET owner = NULL, lease_until = NULL, error = %s "
                "WHERE pass_id = %s AND stage = %s AND name = %s AND owner = %s "
                "AND status = 'todo' RETURNING attempts",
                (error[:2000], part.pass_id, part.stage, part.name, owner),
            ).fetchone()
            if found is not None and int(found[0]) >= max_attempts:
                conn.execute(
                    "UPDATE passes SET status = 'failed', finished_at = now(), error = %s "
                    "WHERE id = %s AND status = 'running'",
                    (f"partition {part.stage}/{part.name} failed {found[0]} times: {error}"[:2000],
                     part.pass_id),
                )  # fmt: skip

    # -- staged results --------------------------------------------------------------

    def stage_decisions(self, pass_id: int, rows: Sequence[StagedDecision]) -> None:
        if not rows:
            return
        values = sorted(
            (
                pass_id,
                r.scope,
                r.subject,
                r.order,
                r.source,
                r.body["kind"],
                r.body["decision"],
                r.body["state"],
                r.body["as_of"],
                r.body["rules_version"],
                _dumps(r.body),
                alerting(r.body),
                json.dumps(r.occurrences) if r.occurrences else None,
            )
            for r in rows
        )
        with self._db.connection() as conn, conn.cursor() as cur:
            # A meter under two districts: the later district decides it (as in one
            # worker's pass, where the later one overwrites), at the earlier one's place.
            cur.executemany(
                "INSERT INTO pass_decisions AS d VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s) ON CONFLICT (pass_id, scope, subject) DO UPDATE SET "
                "ord = least(d.ord, excluded.ord), "
                "src = greatest(d.src, excluded.src), "
                "kind = CASE WHEN excluded.src >= d.src THEN excluded.kind ELSE d.kind END, "
                "decision = CASE WHEN excluded.src >= d.src THEN excluded.decision "
                "ELSE d.decision END, "
                "state = CASE WHEN excluded.src >= d.src THEN excluded.state ELSE d.state END, "
                "body = CASE WHEN excluded.src >= d.src THEN excluded.body ELSE d.body END, "
                "alerting = CASE WHEN excluded.src >= d.src THEN excluded.alerting "
                "ELSE d.alerting END, "
                "occurrences = CASE WHEN excluded.src >= d.src THEN excluded.occurrences "
                "ELSE d.occurrences END",
                values,
            )

    def stage_districts(self, pass_id: int, districts: Sequence[StagedDistrict]) -> None:
        if not districts:
            return
        values = [
            (
                pass_id,
                d.name,
                _dumps(d.body),
                bool((d.body.get("gates") or {}).get("passed")),
                d.gate_failed,
                _dumps(d.reasons),
                any(SEVERITY_RANK[r.get("severity", "info")] > INFO for r in d.reasons),
            )
            for d in sorted(districts, key=lambda d: d.name)
        ]
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pass_districts VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (pass_id, district) DO UPDATE SET body = excluded.body, "
                "gates_passed = excluded.gates_passed, gate_failed = excluded.gate_failed, "
                "reasons = excluded.reasons, alerting = excluded.alerting",
                values,
            )

    def replace_district_bodies(self, pass_id: int, bodies: Sequence[dict[str, Any]]) -> None:
        values = [(_dumps(b), pass_id, b["district"]) for b in bodies]
        if values:
            with self._db.connection() as conn, conn.cursor() as cur:
                cur.executemany(
                    "UPDATE pass_districts SET body = %s WHERE pass_id = %s AND district = %s",
                    values,
                )

    def district_reasons(self, pass_id: int) -> list[tuple[str, list[dict[str, Any]]]]:
        rows = self._db.rows(
            "SELECT district, reasons FROM pass_districts WHERE pass_id = %s AND reasons <> '[]' "
            "ORDER BY gate_failed DESC, district",
            (pass_id,),
        )
        return [(r[0], json.loads(r[1])) for r in rows]

    def staged(
        self, pass_id: int, scope: str, subjects: Sequence[str] | None = None
    ) -> list[StagedDecision]:
        query = "SELECT scope, subject, ord, src, body FROM pass_decisions WHERE pass_id = %s AND scope = %s"
        args: list[Any] = [pass_id, scope]
        if subjects is not None:
            query += " AND subject = ANY(%s)"
            args.append(list(subjects))
        rows = self._db.rows(query + " ORDER BY ord", args)
        return [StagedDecision(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def staged_findings(self, pass_id: int) -> list[StagedDecision]:
        rows = self._db.rows(
            "SELECT scope, subject, ord, src, body, occurrences FROM pass_decisions "
            "WHERE pass_id = %s AND alerting ORDER BY scope DESC, ord",  # one pass's order
            (pass_id,),
        )
        return [
            StagedDecision(r[0], r[1], r[2], r[3], json.loads(r[4]), _events(r[5])) for r in rows
        ]

    def staged_districts(
        self, pass_id: int, names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        query = "SELECT body FROM pass_districts WHERE pass_id = %s"
        args: list[Any] = [pass_id]
        if names is not None:
            query += " AND district = ANY(%s)"
            args.append(list(names))
        return [json.loads(r[0]) for r in self._db.rows(query + " ORDER BY district", args)]

    def counts(self, pass_id: int) -> dict[str, Any]:
        def grouped(conn: psycopg.Connection[Any], scope: str, col: str) -> dict[str, int]:
            rows = conn.execute(
                f"SELECT {col}, count(*) FROM pass_decisions WHERE pass_id = %s AND scope = %s "
                f"GROUP BY {col} ORDER BY {col}",
                (pass_id, scope),
            ).fetchall()
            return {r[0]: int(r[1]) for r in rows}

        with self._db.connection() as conn:
            decisions = grouped(conn, "meter", "decision")
            districts = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE gates_passed) FROM pass_districts "
                "WHERE pass_id = %s",
                (pass_id,),
            ).fetchone()
            lots = grouped(conn, "lot", "decision")
            return {
                "meters": sum(decisions.values()),
                "meter_decisions": decisions,
                "meter_states": grouped(conn, "meter", "state"),
                "lots": sum(lots.values()),
                "lot_decisions": lots,
                "districts": int(districts[0]) if districts else 0,
                "districts_passing_gates": int(districts[1]) if districts else 0,
            }

    def replace_staged(self, pass_id: int, rows: Sequence[StagedDecision]) -> None:
        """Write staged decisions over (the finish's lot extensions)."""
        values = [
            (r.body["decision"], r.body["state"], _dumps(r.body), pass_id, r.scope, r.subject)
            for r in rows
        ]
        if values:
            with self._db.connection() as conn, conn.cursor() as cur:
                cur.executemany(
                    "UPDATE pass_decisions SET decision = %s, state = %s, body = %s "
                    "WHERE pass_id = %s AND scope = %s AND subject = %s",
                    values,
                )

    def publish_pass(self, pass_id: int, summary: dict[str, Any]) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO decisions (subject, scope, kind, decision, state, as_of, "
                "rules_version, body) SELECT subject, scope, kind, decision, state, as_of, "
                "rules_version, body FROM pass_decisions WHERE pass_id = %s ORDER BY scope, subject "
                "ON CONFLICT (scope, subject) DO UPDATE SET kind = excluded.kind, "
                "decision = excluded.decision, state = excluded.state, as_of = excluded.as_of, "
                "rules_version = excluded.rules_version, body = excluded.body",
                (pass_id,),
            )
            # A meter's estimated error joins its history (as PostgresState.save_decisions).
            conn.execute(
                f"""INSERT INTO error_history
                SELECT subject, left(as_of, 10), as_of, state, {ERROR_COLUMNS}
                FROM pass_decisions WHERE pass_id = %s AND scope = 'meter'
                  AND jsonb_exists(body::jsonb -> 'evidence', 'error_pct')
                ORDER BY subject
                ON CONFLICT (meter_id, day) DO UPDATE SET as_of = excluded.as_of,
                  state = excluded.state, error_pct = excluded.error_pct,
                  low_pct = excluded.low_pct, high_pct = excluded.high_pct""",
                (pass_id,),
            )
            conn.execute(
                "DELETE FROM error_history WHERE day < "
                "to_char(to_date(left(%s, 10), 'YYYY-MM-DD') - %s, 'YYYY-MM-DD')",
                (summary["as_of"], ERROR_HISTORY_DAYS),
            )
            conn.execute(
                "INSERT INTO districts (district, as_of, body, gates_passed) "
                "SELECT d.district, p.as_of, d.body, d.gates_passed FROM pass_districts d "
                "CROSS JOIN (SELECT %s::text AS as_of) p WHERE d.pass_id = %s "
                "ORDER BY d.district ON CONFLICT (district) DO UPDATE SET as_of = excluded.as_of, "
                "body = excluded.body, gates_passed = excluded.gates_passed",
                (summary["as_of"], pass_id),
            )
            conn.execute(
                "UPDATE passes SET status = 'done', finished_at = now(), summary = %s "
                "WHERE id = %s",
                (_dumps(summary), pass_id),
            )
            conn.execute(
                "DELETE FROM passes WHERE status <> 'running' AND id NOT IN "
                "(SELECT id FROM passes WHERE status <> 'running' ORDER BY id DESC LIMIT %s)",
                (_KEEP_PASSES,),
            )

    # -- singleton jobs -------------------------------------------------------------

    def once(self, job: str, slot: str, owner: str) -> bool:
        with self._db.connection() as conn:
            found = conn.execute(
                "INSERT INTO job_runs (job, slot, owner) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING owner",
                (job, slot, owner),
            ).fetchone()
            if found is not None:
                conn.execute(
                    "DELETE FROM job_runs WHERE job = %s AND at < now() - interval '1 day'",
                    (job,),
                )
        return found is not None


def _events(text: str | None) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Staged reasons' events from their JSON (lists back to tuples)."""
    if not text:
        return ()
    return tuple(tuple((str(k), int(at)) for k, at in reason) for reason in json.loads(text))
