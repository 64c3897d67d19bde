"""The SQLite outbox: notifications, group buffers and escalation timers that survive a restart."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notify_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
        receiver TEXT NOT NULL, route TEXT NOT NULL, action TEXT NOT NULL,
        alerts TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
        created_at REAL NOT NULL, finished_at REAL, last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS notify_outbox_due ON notify_outbox (state, next_at)",
    """CREATE TABLE IF NOT EXISTS notify_grouped (
        route TEXT NOT NULL, receiver TEXT NOT NULL, action TEXT NOT NULL,
        alert_id INTEGER NOT NULL, member TEXT NOT NULL, alert TEXT NOT NULL,
        at REAL NOT NULL, PRIMARY KEY (route, receiver, action, alert_id))""",
    """CREATE TABLE IF NOT EXISTS notify_escalations (
        route TEXT NOT NULL, alert_id INTEGER NOT NULL, armed TEXT NOT NULL,
        alert TEXT NOT NULL, due_at REAL, step INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (route, alert_id))""",
    # Every submitted change looks its alert up here (refresh, disarm).
    "CREATE INDEX IF NOT EXISTS notify_escalations_alert ON notify_escalations (alert_id)",
)


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
    return json.dumps(value, separators=(",", ":"), default=str)


class Outbox:
    """The notifier's tables in a SQLite file (WAL); callers serialise access.

    Every method but `transaction` runs inside the caller's transaction or autocommits.
    """

    def __init__(self, path: Path) -> None:
        # `timeout`: the file may be shared with other writers (state.sqlite); wait, don't fail.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a process crash (our restart case); like the alert book,
        # a power cut may lose the last commits of both together.
        self._db.execute("PRAGMA synchronous=NORMAL")
        for sql in _SCHEMA:
            self._db.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add(self, n: Notification, now: float) -> None:
        """Queue a notification; a key already queued or delivered is ignored (dedup)."""
        self._db.execute(
            "INSERT OR IGNORE INTO notify_outbox (key, receiver, route, action, alerts, "
            "next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (n.key, n.receiver, n.route, n.action, compact_json(n.alerts), now, now),
        )

    def due(self, now: float, limit: int) -> list[Notification]:
        """Pending notifications whose next attempt is due, oldest first."""
        rows = self._db.execute(
            "SELECT id, key, receiver, route, action, alerts, attempts FROM notify_outbox "
            "WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [
            Notification(key, rcv, route, action, json.loads(alerts), rid, attempts)
            for rid, key, rcv, route, action, alerts, attempts in rows
        ]

    def finish(self, row_id: int, state: str, now: float, error: str = "") -> None:
        """Mark a row `done` or `failed` (kept until pruned, so its key stays deduplicated)."""
        self._db.execute(
            "UPDATE notify_outbox SET state = ?, finished_at = ?, attempts = attempts + 1, "
            "last_error = ? WHERE id = ?",
            (state, now, error or None, row_id),
        )

    def postpone(self, row_id: int, next_at: float, error: str) -> None:
        """Count a failed attempt and schedule the next one."""
        self._db.execute(
            "UPDATE notify_outbox SET attempts = attempts + 1, next_at = ?, last_error = ? "
            "WHERE id = ?",
            (next_at, error, row_id),
        )

    def pending(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM notify_outbox WHERE state = 'pending'"
            ).fetchone()[0]
        )

    def prune(self, before: float) -> None:
        self._db.execute(
            "DELETE FROM notify_outbox WHERE state != 'pending' AND finished_at < ?", (before,)
        )

    # group buffers

    def buffer(
        self, route: str, receiver: str, action: str, alert: dict[str, Any], member: str, now: float
    ) -> None:
        """Hold an alert for a grouped notification; a later change of it replaces its entry
        but keeps the group's window start."""
        self._db.execute(
            "INSERT INTO notify_grouped (route, receiver, action, alert_id, member, alert, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route, receiver, action, alert_id) "
            "DO UPDATE SET member = excluded.member, "
            "alert = excluded.alert",
            (route, receiver, action, alert["id"], member, compact_json(alert), now),
        )

    def groups(self) -> list[tuple[str, str, str, float]]:
        """(route, receiver, action, window start) of every open group."""
        return [
            (r, rc, a, float(at))
            for r, rc, a, at in self._db.execute(
                "SELECT route, receiver, action, min(at) FROM notify_grouped GROUP BY 1, 2, 3"
            )
        ]

    def take_group(
        self, route: str, receiver: str, action: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """Remove and return a group's (member key, alert), by alert id."""
        where = "route = ? AND receiver = ? AND action = ?"
        args = (route, receiver, action)
        rows = self._db.execute(
            f"SELECT member, alert FROM notify_grouped WHERE {where} ORDER BY alert_id", args
        ).fetchall()
        self._db.execute(f"DELETE FROM notify_grouped WHERE {where}", args)
        return [(m, json.loads(a)) for m, a in rows]

    def buffered(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM notify_grouped").fetchone()[0])

    # escalation timers

    def arm(self, route: str, alert: dict[str, Any], due_at: float) -> None:
        """Start a timer; re-submitting the same opening keeps the running one."""
        armed = f"{alert['count']}|{alert['last_seen']}"
        self._db.execute(
            "INSERT INTO notify_escalations (route, alert_id, armed, alert, due_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (route, alert_id) DO UPDATE SET "
            "armed = excluded.armed, alert = excluded.alert, due_at = excluded.due_at, "
            "step = 0 WHERE armed != excluded.armed",
            (route, alert["id"], armed, compact_json(alert), due_at),
        )

    def refresh(self, alert: dict[str, Any]) -> None:
        """Let escalations carry the alert as it is now (count, last_seen, evidence)."""
        self._db.execute(
            "UPDATE notify_escalations SET alert = ? WHERE alert_id = ?",
            (compact_json(alert), alert["id"]),
        )

    def disarm(self, alert_id: int) -> list[tuple[str, int]]:
        """Stop an alert's timers; returns (route, steps already sent) of each."""
        rows = self._db.execute(
            "SELECT route, step FROM notify_escalations WHERE alert_id = ?", (alert_id,)
        ).fetchall()
        self._db.execute("DELETE FROM notify_escalations WHERE alert_id = ?", (alert_id,))
        return [(r, int(s)) for r, s in rows]

    def due_escalations(self, now: float) -> list[Escalation]:
        rows = self._db.execute(
            "SELECT route, alert, armed, step FROM notify_escalations "
            "WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at",
            (now,),
        ).fetchall()
        return [Escalation(r, json.loads(a), armed, int(s)) for r, a, armed, s in rows]

    def advance(self, route: str, alert_id: int, due_at: float | None) -> None:
        """One step sent; the next is due at `due_at` (None: none, but stay armed so the
        acknowledgement still reaches the people escalated to)."""
        self._db.execute(
            "UPDATE notify_escalations SET step = step + 1, due_at = ? "
            "WHERE route = ? AND alert_id = ?",
            (due_at, route, alert_id),
        )

    def drop_escalation(self, route: str, alert_id: int) -> None:
        self._db.execute(
            "DELETE FROM notify_escalations WHERE route = ? AND alert_id = ?", (route, alert_id)
        )

    def close(self) -> None:
        self._db.close()
