"""What only the PostgreSQL state has: migrations, workers at once, outages.

The contract shared with the embedded store is in test_state_contract.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from monitor.core.ports import SeenUpdate, StateUnavailable
from monitor.core.registry import MeterRow
from monitor.store.postgres.db import Database, redact
from monitor.store.postgres.migrations import MIGRATIONS, applied_versions, latest_version, migrate
from monitor.store.postgres.state import PostgresState
from tests.conftest import _require
from tests.helpers import wait_for
from tests.services import PostgreSQL, find_postgres


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    opened = Database(postgres_url)
    yield opened
    opened.close()


def elec(meter: str, district: str = "TA1") -> MeterRow:
    return MeterRow(meter_id=meter, kind="elec", district=district)


def test_a_fresh_database_gets_every_migration_once(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert migrate(conn) == [m.version for m in MIGRATIONS]
        assert migrate(conn) == []  # nothing left to do
        assert applied_versions(conn) == [m.version for m in MIGRATIONS]
    assert [m.version for m in MIGRATIONS] == list(range(1, latest_version() + 1))


def test_an_older_schema_is_upgraded_and_keeps_its_rows(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert migrate(conn, upto=1) == [1]
        conn.execute("INSERT INTO registry (meter_id, kind, district) VALUES ('E1', 'elec', 'T')")
    db = Database(postgres_url)  # a worker of the new version starts
    try:
        state = PostgresState(db)
        assert [r.meter_id for r in state.registry_rows()] == ["E1"]
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            assert applied_versions(conn) == [m.version for m in MIGRATIONS]
    finally:
        db.close()


def test_workers_starting_together_migrate_once(postgres_url: str) -> None:
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                applied.append(migrate(conn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(applied, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]


def test_a_flush_retried_after_its_commit_went_through_counts_once(db: Database) -> None:
    # What a retry after a lost commit looks like to the database: the same flush again.
    state = PostgresState(db)
    flush = {"E1": SeenUpdate("elec", "TA1", 1, 2, 7, 1.0)}
    assert state.write_seen(1, flush)
    assert not state.write_seen(1, flush)
    other = PostgresState(db)  # another worker, numbering its flushes from 1 too
    other.note_seen({"E1": SeenUpdate("elec", "TA1", 1, 2, 5, 1.0)})
    assert other.flush_seen() == 1
    seen = state.seen("E1")
    assert seen is not None and seen["messages"] == 12


def test_registry_imports_from_two_workers_at_once_both_land(db: Database) -> None:
    a, b = PostgresState(db), PostgresState(db)
    rows = [elec(f"E{i:04d}") for i in range(400)]
    errors: list[BaseException] = []

    def upsert(state: PostgresState, order: list[MeterRow]) -> None:
        try:
            for _ in range(5):
                state.upsert_meters(order)
        except BaseException as exc:  # a deadlock would land here
            errors.append(exc)

    threads = [
        threading.Thread(target=upsert, args=(a, rows)),
        threading.Thread(target=upsert, args=(b, rows[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(a.registry_rows()) == 400


def test_the_password_is_not_shown() -> None:
    assert redact("postgresql://mon:s3cret@db:5432/x") == "postgresql://mon:***@db:5432/x"
    assert redact("postgresql://db/x") == "postgresql://db/x"


def test_an_outage_is_reported_and_nothing_noted_meanwhile_is_lost() -> None:
    _require(find_postgres, "initdb", "postgresql")
    server = PostgreSQL()  # its own server: this test stops it
    try:
        server.start()
        url = server.create_database("outage")
        db = Database(url, timeout_s=1.0)
        state = PostgresState(db)
        state.upsert_meters([elec("E1")])
        state.note_seen({"E1": SeenUpdate("elec", "TA1", 1, 2, 3, 1.0)})
        state.flush_seen()

        server.stop()
        health = state.health()
        assert not health.available and "outage" in health.detail
        with pytest.raises(StateUnavailable):
            state.registry_rows()
        state.note_seen({"E1": SeenUpdate("elec", "TA1", 3, 9, 4, 2.0)})  # ingest goes on
        with pytest.raises(StateUnavailable):
            state.flush_seen()

        server.start()
        wait_for(lambda: state.health().available, what="the worker to reconnect")
        assert state.flush_seen() == 1  # kept through the outage, written now
        seen = state.seen("E1")
        assert seen is not None and (seen["messages"], seen["last_ts"]) == (7, 9)
        db.close()
    finally:
        server.cleanup()
