"""The alert book's rows in PostgreSQL: `core.ports.AlertStore` shared by every worker.

Writers are serialised by a table lock held for their transaction (SHARE ROW
EXCLUSIVE: readers go on, a second writer waits): an alert pass reads, decides and
writes many rows, and two passes folding the same alert must not both open it. Alert
writes are few (a pass, an offline check, a person's acknowledgement), so waiting costs
nothing that matters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from monitor.core.ports import AlertFilter, AlertRecord
from monitor.store.alertrows import (
    ALERT_COLUMNS,
    UPDATE_SET,
    filter_sql,
    insert_values,
    record,
    update_values,
)
from monitor.store.postgres.db import Database

_SELECT = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"


class _Writes:
    """`AlertWrites` inside one transaction that holds the writers' lock."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def by_keys(self, keys: Sequence[str]) -> dict[str, AlertRecord]:
        rows = self._conn.execute(f"{_SELECT} WHERE key = ANY(%s)", (list(set(keys)),))
        return {r[1]: record(r) for r in rows}

    def by_id(self, alert_id: int) -> AlertRecord | None:
        row = self._conn.execute(f"{_SELECT} WHERE id = %s", (alert_id,)).fetchone()
        return record(row) if row is not None else None

    def insert(self, records: Sequence[AlertRecord]) -> list[int]:
        if not records:
            return []
        cols = ", ".join(ALERT_COLUMNS[1:])
        marks = ", ".join(["%s"] * (len(ALERT_COLUMNS) - 1))
        ids = []
        with self._conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO alerts ({cols}) VALUES ({marks}) RETURNING id",
                [insert_values(r) for r in records],
                returning=True,
            )
            while True:  # one result set per row, in order
                found = cur.fetchone()
                if found is not None:
                    ids.append(int(found[0]))
                if not cur.nextset():
                    break
        return ids

    def update(self, records: Sequence[AlertRecord]) -> None:
        if not records:
            return
        with self._conn.cursor() as cur:
            cur.executemany(
                f"UPDATE alerts SET {UPDATE_SET.format(m='%s')} WHERE id = %s",
                [update_values(r) for r in records],
            )

    def unresolved_before(self, before_ms: int) -> list[AlertRecord]:
        rows = self._conn.execute(
            f"{_SELECT} WHERE status <> 'resolved' AND last_seen < %s ORDER BY id", (before_ms,)
        )
        return [record(r) for r in rows]

    def occurrences(self, alert_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        rows = self._conn.execute(
            "SELECT alert_id, occurrence, at_ms FROM alert_occurrences WHERE alert_id = ANY(%s)",
            (list(set(alert_ids)),),
        )
        for alert_id, key, at in rows:
            out.setdefault(int(alert_id), {})[str(key)] = int(at)
        return out

    def add_occurrences(self, rows: Sequence[tuple[int, str, int]]) -> None:
        if not rows:
            return
        with self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO alert_occurrences (alert_id, occurrence, at_ms) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                rows,
            )


class PostgresAlerts:
    """Alerts in the shared database.

    alerts = PostgresAlerts(db)
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextmanager
    def writing(self) -> Iterator[_Writes]:
        with self._db.transaction() as conn:
            conn.execute("LOCK TABLE alerts IN SHARE ROW EXCLUSIVE MODE")
            yield _Writes(conn)

    def get(self, alert_id: int) -> AlertRecord | None:
        row = self._db.one(f"{_SELECT} WHERE id = %s", [alert_id])
        return record(row) if row is not None else None

    def query(self, flt: AlertFilter, after_id: int, limit: int) -> list[AlertRecord]:
        where, args = filter_sql(flt, after_id, "%s")
        rows = self._db.rows(f"{_SELECT} WHERE {where} ORDER BY id LIMIT %s", [*args, limit])
        return [record(r) for r in rows]

    def count_open(self) -> dict[str, int]:
        rows = self._db.rows(
            "SELECT severity, count(*) FROM alerts WHERE status = 'open' GROUP BY severity"
        )
        return {str(s): int(n) for s, n in rows}

    def close(self) -> None:
        """The database is closed by its owner (it is shared with the state)."""
