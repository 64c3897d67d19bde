"""The state backend a process runs on: embedded SQLite files, or one PostgreSQL
database shared by every worker (`state.url`, `MONITOR_STATE_URL`).

backend = open_state(settings.state, settings.storage.data_dir, owner="worker-1")
backend.state, backend.alerts, backend.outbox, backend.audit   # the roles, one implementation each
with backend.atomic(): ...                       # several stores' writes at once
backend.close()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from monitor import __version__
from monitor.core.ports import AlertStore, AuditLog, OutboxStore, StateStore
from monitor.store.alertrows import SqliteAlerts
from monitor.store.audit import SqliteAudit
from monitor.store.outbox import SqliteOutbox
from monitor.store.state import SqliteState

if TYPE_CHECKING:
    from monitor.platform.config import StateSettings
    from monitor.store.postgres.db import Database


@dataclass
class StateBackend:
    """The state, alert rows, outbox and audit log of one process, and how to close them."""

    state: StateStore
    alerts: AlertStore
    outbox: OutboxStore
    audit: AuditLog
    # What the ingest worker writes through: the state itself, or (PostgreSQL) its own
    # small pool with a short timeout, so an outage slows telemetry by milliseconds.
    ingest: StateStore
    database: Database | None = None  # the shared database, when there is one
    ingest_database: Database | None = None

    @property
    def shared(self) -> bool:
        """Several workers share this state (PostgreSQL)."""
        return self.database is not None

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Writes of the state, the alerts and the outbox inside commit together (on
        PostgreSQL; the embedded files are separate, each write commits on its own)."""
        if self.database is None:
            yield
            return
        with self.database.transaction():
            yield

    def close(self) -> None:
        """Write what is in memory, then close everything (the database last)."""
        try:
            if self.ingest is not self.state:
                self.ingest.close()
            self.state.close()
        finally:
            self.alerts.close()
            self.outbox.close()
            self.audit.close()
            for db in (self.ingest_database, self.database):
                if db is not None:
                    db.close()


def open_state(settings: StateSettings, data_dir: Path, owner: str | None = None) -> StateBackend:
    """The backend the settings name; `owner` names this process in shared writes."""
    if settings.url is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        state = SqliteState(data_dir / "state.sqlite")
        return StateBackend(
            state,
            SqliteAlerts(data_dir / "state.sqlite"),
            SqliteOutbox(data_dir / "notify.sqlite"),
            SqliteAudit(data_dir / "state.sqlite", __version__),
            state,
        )
    from monitor.store.postgres.alerts import PostgresAlerts
    from monitor.store.postgres.audit import PostgresAudit
    from monitor.store.postgres.db import Database
    from monitor.store.postgres.outbox import PostgresOutbox
    from monitor.store.postgres.state import PostgresState

    db = Database(settings.url, max_size=settings.pool_size, timeout_s=settings.timeout_s)
    quick = Database(settings.url, max_size=2, timeout_s=min(0.5, settings.timeout_s))
    try:
        return StateBackend(
            PostgresState(db, owner),
            PostgresAlerts(db),
            PostgresOutbox(db),
            PostgresAudit(db, __version__),
            PostgresState(quick, owner),
            db,
            quick,
        )
    except BaseException:
        for opened in (quick, db):
            with contextlib.suppress(Exception):
                opened.close()
        raise
