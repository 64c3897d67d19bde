"""The notifier's outbox in PostgreSQL: `core.ports.OutboxStore` shared by every worker.

Rows are claimed with `FOR UPDATE SKIP LOCKED` and a lease (`claim_until`): workers
ticking at the same moment take disjoint rows, and the rows of a worker that died are
taken again once its lease runs out. A settle (`finish`, `postpone`) only touches a row
its claimant still holds. Escalation timers are taken the same way (skip locked, inside
the tick's transaction), and a group buffer is emptied by one `DELETE … RETURNING`, so
each escalation step and each group is enqueued once, whoever ticks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from monitor.core.ports import Escalation, Notification, compact_json
from monitor.store.postgres.db import Database


class PostgresOutbox:
    """The outbox, group buffers and escalation timers of every worker.

    outbox = PostgresOutbox(db)
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._db.transaction():
            yield

    def _exec(self, query: str, args: Sequence[Any] = ()) -> int:
        with self._db.connection() as conn:
            return conn.execute(query, args).rowcount

    def add(self, n: Notification, now: float) -> None:
        self._exec(
            "INSERT INTO notify_outbox (key, receiver, route, action, alerts, next_at, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
            (n.key, n.receiver, n.route, n.action, compact_json(n.alerts), now, now),
        )

    def claim(self, now: float, limit: int, owner: str, lease_s: float) -> list[Notification]:
        with self._db.transaction() as conn:
            rows = conn.execute(
                """UPDATE notify_outbox SET claimed_by = %s, claim_until = %s
                WHERE id IN (
                    SELECT id FROM notify_outbox
                    WHERE state = 'pending' AND next_at <= %s
                      AND (claim_until IS NULL OR claim_until <= %s)
                    ORDER BY next_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
                RETURNING id, key, receiver, route, action, alerts, attempts, next_at""",
                (owner, now + lease_s, now, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (r[7], r[0]))  # RETURNING has no order of its own
        return [
            Notification(key, rcv, route, action, json.loads(alerts), int(rid), int(attempts))
            for rid, key, rcv, route, action, alerts, attempts, _ in rows
        ]

    def finish(self, row_id: int, state: str, now: float, owner: str, error: str = "") -> bool:
        return (
            self._exec(
                "UPDATE notify_outbox SET state = %s, finished_at = %s, attempts = attempts + 1, "
                "last_error = %s, claimed_by = NULL, claim_until = NULL "
                "WHERE id = %s AND claimed_by = %s AND state = 'pending'",
                (state, now, error or None, row_id, owner),
            )
            == 1
        )

    def postpone(self, row_id: int, next_at: float, owner: str, error: str) -> bool:
        return (
            self._exec(
                "UPDATE notify_outbox SET attempts = attempts + 1, next_at = %s, "
                "last_error = %s, claimed_by = NULL, claim_until = NULL "
                "WHERE id = %s AND claimed_by = %s AND state = 'pending'",
                (next_at, error, row_id, owner),
            )
            == 1
        )

    def release(self, row_ids: Sequence[int], owner: str) -> None:
        self._exec(
            "UPDATE notify_outbox SET claimed_by = NULL, claim_until = NULL "
            "WHERE id = ANY(%s) AND claimed_by = %s",
            (list(row_ids), owner),
        )

    def pending(self) -> int:
        found = self._db.one("SELECT count(*) FROM notify_outbox WHERE state = 'pending'")
        return int(found[0]) if found else 0

    def prune(self, before: float) -> None:
        self._exec(
            "DELETE FROM notify_outbox WHERE state <> 'pending' AND finished_at < %s", (before,)
        )

    # group buffers

    def buffer(
        self, route: str, receiver: str, action: str, alert: dict[str, Any], member: str, now: float
    ) -> None:
        self._exec(
            "INSERT INTO notify_grouped (route, receiver, action, alert_id, member, alert, at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (route, receiver, action, alert_id) "
            "DO UPDATE SET member = excluded.member, alert = excluded.alert",
            (route, receiver, action, alert["id"], member, compact_json(alert), now),
        )

    def groups(self) -> list[tuple[str, str, str, float]]:
        rows = self._db.rows(
            "SELECT route, receiver, action, min(at) FROM notify_grouped GROUP BY 1, 2, 3 "
            "ORDER BY 1, 2, 3"
        )
        return [(r, rc, a, float(at)) for r, rc, a, at in rows]

    def take_group(
        self, route: str, receiver: str, action: str
    ) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.rows(
            "DELETE FROM notify_grouped WHERE route = %s AND receiver = %s AND action = %s "
            "RETURNING alert_id, member, alert",
            (route, receiver, action),
        )
        return [(m, json.loads(a)) for _, m, a in sorted(rows, key=lambda r: int(r[0]))]

    def buffered(self) -> int:
        found = self._db.one("SELECT count(*) FROM notify_grouped")
        return int(found[0]) if found else 0

    # escalation timers

    def arm(self, route: str, alert: dict[str, Any], due_at: float) -> None:
        armed = f"{alert['count']}|{alert['last_seen']}"
        self._exec(
            "INSERT INTO notify_escalations AS e (route, alert_id, armed, alert, due_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (route, alert_id) DO UPDATE SET "
            "armed = excluded.armed, alert = excluded.alert, due_at = excluded.due_at, "
            "step = 0 WHERE e.armed <> excluded.armed",
            (route, alert["id"], armed, compact_json(alert), due_at),
        )

    def refresh(self, alert: dict[str, Any]) -> None:
        self._exec(
            "UPDATE notify_escalations SET alert = %s WHERE alert_id = %s",
            (compact_json(alert), alert["id"]),
        )

    def disarm(self, alert_id: int) -> list[tuple[str, int]]:
        rows = self._db.rows(
            "DELETE FROM notify_escalations WHERE alert_id = %s RETURNING route, step",
            (alert_id,),
        )
        return sorted((r, int(s)) for r, s in rows)

    def due_escalations(self, now: float) -> list[Escalation]:
        rows = self._db.rows(
            "SELECT route, alert, armed, step FROM notify_escalations "
            "WHERE due_at IS NOT NULL AND due_at <= %s ORDER BY due_at, route, alert_id "
            "FOR UPDATE SKIP LOCKED",
            (now,),
        )
        return [Escalation(r, json.loads(a), armed, int(s)) for r, a, armed, s in rows]

    def advance(self, route: str, alert_id: int, due_at: float | None) -> None:
        self._exec(
            "UPDATE notify_escalations SET step = step + 1, due_at = %s "
            "WHERE route = %s AND alert_id = %s",
            (due_at, route, alert_id),
        )

    def drop_escalation(self, route: str, alert_id: int) -> None:
        self._exec(
            "DELETE FROM notify_escalations WHERE route = %s AND alert_id = %s", (route, alert_id)
        )

    def close(self) -> None:
        """The database is closed by its owner (it is shared with the state)."""
