"""PostgreSQL plumbing shared by the state, the alert rows, the outbox and the pass leases:
a connection pool, units of work, versioned migrations, and outages as `StateUnavailable`.

db = Database("postgresql://monitor:secret@db:5432/monitor")
with db.transaction() as conn:     # one transaction; nested calls in this thread join it
    conn.execute("...")

Every connection of the pool is in autocommit; `transaction()` opens an explicit one.
A `transaction()` inside another (same thread) joins the outer one, so a caller can
make several stores' writes atomic (the end of an evaluation pass: decisions, alerts
and their notifications commit together or not at all).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from monitor.core.ports import StateHealth, StateUnavailable
from monitor.store.postgres.migrations import migrate

log = logging.getLogger(__name__)

# What says "the database is not there" (as opposed to a bug in a statement).
_DOWN = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def is_outage(exc: BaseException) -> bool:
    """The database is unreachable, shutting down or refusing us; not a conflict (class
    40: deadlock, serialisation), which the caller retries, nor a bad statement."""
    if not isinstance(exc, _DOWN):
        return False
    state = getattr(exc, "sqlstate", None) or ""
    return not state.startswith("40")


def redact(url: str) -> str:
    """The URL without its password (for logs and /healthz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Database:
    """A pool of connections to one PostgreSQL database, migrated on first use.

    `timeout_s` bounds how long a caller waits for a connection before the database is
    declared unavailable (a 503 for the API, a wait for the evaluation).
    """

    backend = "postgresql"

    def __init__(
        self, url: str, *, max_size: int = 10, timeout_s: float = 5.0, retry_s: float = 2.0
    ) -> None:
        """`retry_s`: after an outage, calls fail at once for this long (no caller waits
        `timeout_s` for a database known to be away), then one tries again."""
        self.url = url
        self.where = redact(url)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
            check=ConnectionPool.check_connection,
            # The pool retries a lost connection with a doubling delay; giving up after a
            # few seconds restarts the doubling at the next request, so a worker is back
            # within seconds of the database, however long it was away.
            reconnect_timeout=max(5.0, 2 * timeout_s),
            name="monitor-state",
        )
        # Opening does not wait: a worker starts (and stores telemetry) while the
        # database is down, and answers 503 for the state until it is back.
        self._pool.open(wait=False)
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        self._migrated = False
        self._retry_s = retry_s
        self._retry_at = 0.0  # monotonic: before it, the database is taken to be away
        self._why = ""

    # -- units of work ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction (joined when this thread is already in one)."""
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        # `connection` takes a pooled one after the schema check and turns an outage,
        # in the body or at commit, into StateUnavailable.
        with self.connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in autocommit (the current transaction's, when there is one)."""
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        self._ensure_schema()
        try:
            with self._pool.connection() as conn:
                yield conn
        except _DOWN as exc:
            if not is_outage(exc):
                raise
            raise self._away(exc) from exc

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query's rows."""
        with self.connection() as conn:
            return conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """A query's first row, or None."""
        with self.connection() as conn:
            return conn.execute(sql, args).fetchone()

    # -- schema and health ---------------------------------------------------

    def _away(self, exc: BaseException) -> StateUnavailable:
        self._why = f"state database {self.where}: {_reason(exc)}"
        self._retry_at = time.monotonic() + self._retry_s
        return StateUnavailable(self._why)

    def _ensure_schema(self) -> None:
        if time.monotonic() < self._retry_at:
            raise StateUnavailable(self._why)
        if self._migrated:
            return
        with self._migrate_lock:
            if self._migrated:
                return
            try:
                with self._pool.connection() as conn:
                    applied = migrate(conn)
            except _DOWN as exc:
                raise self._away(exc) from exc
            if applied:
                log.info("state database %s: migrations %s applied", self.where, applied)
            self._migrated = True

    def health(self) -> StateHealth:
        """Reachable (a round trip) or not, with the reason."""
        try:
            self.one("SELECT 1")
        except StateUnavailable as exc:
            return StateHealth(self.backend, False, str(exc))
        return StateHealth(self.backend, True, self.where)

    def close(self) -> None:
        self._pool.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
