"""The alert book's rows in SQLite beside the state (the embedded `core.ports.AlertStore`)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monitor.core.ports import AlertFilter, AlertRecord

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, rule TEXT NOT NULL,
    severity TEXT NOT NULL, kind TEXT NOT NULL, meter TEXT, lot TEXT, district TEXT,
    message TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    count INTEGER NOT NULL, status TEXT NOT NULL, evidence TEXT NOT NULL,
    history TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, severity)",
    "CREATE INDEX IF NOT EXISTS alerts_meter ON alerts (meter)",
    # The distinct events an event rule's alert stands for, each once (alerts.count is
    # how many rows it has). A state condition's alert has none: its count is its passes.
    """CREATE TABLE IF NOT EXISTS alert_occurrences (
    alert_id INTEGER NOT NULL, occurrence TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (alert_id, occurrence))""",
)
# The columns in `AlertRecord` order: one list for every backend's SELECT.
ALERT_COLUMNS = (
    "id",
    "key",
    "rule",
    "severity",
    "kind",
    "meter",
    "lot",
    "district",
    "message",
    "first_seen",
    "last_seen",
    "count",
    "status",
    "evidence",
    "history",
)
_SELECT = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"
_UPDATED = (
    "rule",
    "severity",
    "message",
    "first_seen",
    "last_seen",
    "count",
    "status",
    "evidence",
    "history",
)


def record(row: Sequence[Any]) -> AlertRecord:
    """A row of `ALERT_COLUMNS` → its record."""
    return AlertRecord(*row)


def filter_sql(flt: AlertFilter, after_id: int, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause of an alert query and its arguments (`mark`: ? or %s)."""
    where = [f"id > {mark}"]
    args: list[Any] = [after_id]
    for col in ("status", "severity", "kind", "district", "meter", "lot"):
        value = getattr(flt, col)
        if value is not None:
            where.append(f"{col} = {mark}")
            args.append(value)
    if flt.since_ms is not None:
        where.append(f"last_seen >= {mark}")
        args.append(flt.since_ms)
    return " AND ".join(where), args


def insert_values(r: AlertRecord) -> tuple[Any, ...]:
    """An alert's values in `ALERT_COLUMNS` order, without the id."""
    return (
        r.key,
        r.rule,
        r.severity,
        r.kind,
        r.meter,
        r.lot,
        r.district,
        r.message,
        r.first_seen,
        r.last_seen,
        r.count,
        r.status,
        r.evidence,
        r.history,
    )


def update_values(r: AlertRecord) -> tuple[Any, ...]:
    """What an update writes (`_UPDATED`), then the id."""
    return (*(getattr(r, c) for c in _UPDATED), r.id)


UPDATE_SET = ", ".join(f"{c} = {{m}}" for c in _UPDATED)


class _Writes:
    """`AlertWrites` over the SQLite connection, inside its IMMEDIATE transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def by_keys(self, keys: Sequence[str]) -> dict[str, AlertRecord]:
        out: dict[str, AlertRecord] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"{_SELECT} WHERE key IN ({marks})", chunk):
                out[row[1]] = record(row)
        return out

    def by_id(self, alert_id: int) -> AlertRecord | None:
        row = self._db.execute(f"{_SELECT} WHERE id = ?", (alert_id,)).fetchone()
        return record(row) if row is not None else None

    def insert(self, records: Sequence[AlertRecord]) -> list[int]:
        sql = (
            f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS[1:])}) "
            f"VALUES ({', '.join('?' * (len(ALERT_COLUMNS) - 1))})"
        )
        return [int(self._db.execute(sql, insert_values(r)).lastrowid or 0) for r in records]

    def update(self, records: Sequence[AlertRecord]) -> None:
        sql = f"UPDATE alerts SET {UPDATE_SET.format(m='?')} WHERE id = ?"
        self._db.executemany(sql, [update_values(r) for r in records])

    def unresolved_before(self, before_ms: int) -> list[AlertRecord]:
        rows = self._db.execute(
            f"{_SELECT} WHERE status != 'resolved' AND last_seen < ? ORDER BY id", (before_ms,)
        )
        return [record(r) for r in rows]

    def occurrences(self, alert_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        unique = list(dict.fromkeys(alert_ids))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for alert_id, key, at in self._db.execute(
                "SELECT alert_id, occurrence, at_ms FROM alert_occurrences "
                f"WHERE alert_id IN ({marks})",
                chunk,
            ):
                out.setdefault(int(alert_id), {})[str(key)] = int(at)
        return out

    def add_occurrences(self, rows: Sequence[tuple[int, str, int]]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO alert_occurrences (alert_id, occurrence, at_ms) VALUES (?, ?, ?)",
            rows,
        )


class SqliteAlerts:
    """Alerts in a SQLite file (its own connection; the file is usually state.sqlite).

    alerts = SqliteAlerts(Path("data/state.sqlite"))
    with alerts.writing() as w: w.insert([...])
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for sql in _SCHEMA:
            self._db.execute(sql)
        self._lock = threading.Lock()

    @contextmanager
    def writing(self) -> Iterator[_Writes]:
        """One IMMEDIATE transaction: other processes writing the file wait (timeout)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _Writes(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, alert_id: int) -> AlertRecord | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE id = ?", (alert_id,)).fetchone()
        return record(row) if row is not None else None

    def query(self, flt: AlertFilter, after_id: int, limit: int) -> list[AlertRecord]:
        where, args = filter_sql(flt, after_id, "?")
        with self._lock:
            rows = self._db.execute(
                f"{_SELECT} WHERE {where} ORDER BY id LIMIT ?", (*args, limit)
            ).fetchall()
        return [record(r) for r in rows]

    def count_open(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT severity, count(*) FROM alerts WHERE status = 'open' GROUP BY severity"
            ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
