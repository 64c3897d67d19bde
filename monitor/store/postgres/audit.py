"""The audit log in PostgreSQL: one hash chain for every worker of a cluster.

Appends are serialised inside their transaction by a row lock on the chain's head
(`SELECT … FOR UPDATE` on the `head` mark, which the migration creates): a second
worker appending waits until the first commits, then chains to the record it wrote.
No session or advisory lock is held across transactions, so this works behind a
transaction pooler. Record times come from the database's clock, one clock for the
whole cluster (and, being taken under the lock, in chain order).

As in the embedded log, triggers refuse any change to a record and any deletion above
the purge anchor, and the marks only move forward.
"""

from __future__ import annotations

from typing import Any

import psycopg

from monitor.core.audit import GENESIS, seal
from monitor.core.ports import AuditAnchor, AuditEntry, AuditRow
from monitor.store.postgres.db import Database

# The wall clock as the embedded log writes it (format_ts: milliseconds, UTC, 'Z').
_NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


class PostgresAudit:
    """The audit log in the shared database.

    audit = PostgresAudit(db, software="0.1.0")
    audit.append(AuditEntry("inspector.wang", "authority", "alert.ack", "alert:12", {...}))
    """

    def __init__(self, db: Database, software: str) -> None:
        self._db = db
        self._software = software

    def append(self, entry: AuditEntry) -> AuditRow:
        with self._db.transaction() as conn:
            return self._append(conn, entry)

    def _append(self, conn: psycopg.Connection[Any], entry: AuditEntry) -> AuditRow:
        # The lock that makes the chain one: held to the end of this transaction.
        head = conn.execute(
            "SELECT seq, hash FROM audit_marks WHERE name = 'head' FOR UPDATE"
        ).fetchone()
        seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS)
        found = conn.execute(f"SELECT {_NOW}").fetchone()
        at = str(found[0]) if found else ""
        row = seal(seq + 1, prev, entry, at, self._software)
        conn.execute(
            "INSERT INTO audit_log (seq, at, body, hash) VALUES (%s, %s, %s, %s)",
            (row.seq, at, row.body, row.hash),
        )
        conn.execute(
            "UPDATE audit_marks SET seq = %s, hash = %s WHERE name = 'head'", (row.seq, row.hash)
        )
        return row

    @staticmethod
    def _mark(conn: psycopg.Connection[Any], name: str) -> AuditAnchor | None:
        row = conn.execute("SELECT seq, hash FROM audit_marks WHERE name = %s", (name,)).fetchone()
        if row is None or int(row[0]) == 0:  # the head before the first record
            return None
        return AuditAnchor(int(row[0]), str(row[1]))

    def rows(self, after_seq: int, limit: int) -> list[AuditRow]:
        found = self._db.rows(
            "SELECT seq, body, hash FROM audit_log WHERE seq > %s ORDER BY seq LIMIT %s",
            [after_seq, limit],
        )
        return [AuditRow(int(s), str(b), str(h)) for s, b, h in found]

    def anchor(self) -> AuditAnchor | None:
        with self._db.connection() as conn:
            return self._mark(conn, "anchor")

    def head(self) -> AuditAnchor | None:
        with self._db.connection() as conn:
            return self._mark(conn, "head")

    def purge(self, before: str) -> int:
        with self._db.transaction() as conn:
            # Under the head's lock: no record is appended while the anchor moves.
            conn.execute("SELECT seq FROM audit_marks WHERE name = 'head' FOR UPDATE")
            last = conn.execute(
                "SELECT seq, hash FROM audit_log WHERE at < %s ORDER BY seq DESC LIMIT 1",
                (before,),
            ).fetchone()
            if last is None:
                return 0
            conn.execute(
                "INSERT INTO audit_marks (name, seq, hash) VALUES ('anchor', %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (int(last[0]), str(last[1])),
            )
            gone = conn.execute("DELETE FROM audit_log WHERE seq <= %s", (int(last[0]),)).rowcount
            self._append(
                conn,
                AuditEntry(
                    "service", "system", "audit.purge", "audit", {"before": before, "purged": gone}
                ),
            )
        return gone

    def close(self) -> None:
        """The database is closed by its owner (it is shared with the state)."""
