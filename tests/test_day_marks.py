"""Which (district, UTC day)s changed: the marks a telemetry store leaves in the state once
the readings it accepted are readable, and the day summaries that consume them.

The stores are the real ones (embedded SQLite, InfluxDB behind the v2 adapter); the marks
go to the real SQLite state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.core.clock import DAY_MS
from monitor.core.ports import TelemetryStore, taxi_day_key, written_days
from monitor.core.schema import (
    ELEC_EVENT,
    ELEC_READING,
    TAXI_EVENT,
    TAXI_STATUS,
    TAXI_TRIP,
    Record,
)
from monitor.platform.config import InfluxSettings
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.influx import InfluxStore
from monitor.store.marks import PendingMarks
from monitor.store.postgres.db import Database
from monitor.store.postgres.state import PostgresState
from monitor.store.state import SqliteState
from tests.conftest import _require
from tests.helpers import BASE_MS, wait_for
from tests.services import InfluxStack, PostgreSQL, find_postgres

STEP = 900_000
DAY0 = BASE_MS // DAY_MS  # BASE_MS is 16:00 UTC: reading 32 is the next UTC day


def elec(i: int, meter: str = "M1", district: str = "TA1", kwh: float = 1.0) -> Record:
    return Record(ELEC_READING, meter, district, BASE_MS + i * STEP, {"energy_kwh": kwh})


def everything(state: SqliteState, district: str) -> set[int]:
    return state.marked_days(district, 0, 10**9)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SqliteState]:
    opened = SqliteState(tmp_path / "state.sqlite")
    yield opened
    opened.close()


def influx_settings(stack: InfluxStack) -> InfluxSettings:
    return InfluxSettings(
        url=stack.url, token=stack.token, org=stack.org, bucket=stack.bucket, retry_max_s=0.5
    )


@pytest.fixture(params=["embedded", "influxdb"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, state: SqliteState
) -> Iterator[TelemetryStore]:
    if request.param == "embedded":
        opened: TelemetryStore = EmbeddedStore(
            tmp_path / "telemetry.sqlite", Metrics(), marks=state
        )
    else:
        stack: InfluxStack = request.getfixturevalue("influxdb")
        opened = InfluxStore(influx_settings(stack), tmp_path / "spool", Metrics(), state)
    yield opened
    opened.close()


def test_written_days_are_the_days_of_readings_and_of_taxi_telemetry_by_bucket() -> None:
    batch = [
        elec(0),
        elec(31, meter="M2"),
        elec(32),  # the next UTC day
        elec(-70, district="TB"),  # late: the day before
        Record(ELEC_READING, "M9", "", BASE_MS, {"energy_kwh": 1.0}),  # no district
        Record(ELEC_EVENT, "M1", "TC", BASE_MS, {"code": "cover_open"}),
        Record(TAXI_TRIP, "T1", "", BASE_MS, {"trip_id": "x", "meter_km": 1.0}),
        Record(TAXI_STATUS, "T1", "", BASE_MS - DAY_MS, {"seal": "intact"}),
        Record(TAXI_EVENT, "T2", "", BASE_MS, {"code": "power_cycle"}),
    ]
    assert taxi_day_key("T1") != taxi_day_key("T2")
    assert written_days(batch) == {
        ("TA1", DAY0),
        ("TA1", DAY0 + 1),
        ("TB", DAY0 - 1),
        (taxi_day_key("T1"), DAY0),
        (taxi_day_key("T1"), DAY0 - 1),
        (taxi_day_key("T2"), DAY0),
    }


def test_a_store_marks_the_days_of_every_batch_once_readable(
    store: TelemetryStore, state: SqliteState
) -> None:
    store.write([elec(i) for i in range(4)])
    store.write([elec(40), elec(1, kwh=2.0)])  # the next day, and a changed duplicate
    store.write([elec(-170, district="TB")])  # late: two days back, another district
    store.write([Record(ELEC_EVENT, "M1", "TC", BASE_MS, {"code": "cover_open"})])
    store.write([Record(TAXI_STATUS, "T1", "", BASE_MS - DAY_MS, {"seal": "intact"})])
    assert store.flush(20)  # readable, so marked (a store marks before it forgets a batch)
    assert everything(state, "TA1") == {DAY0, DAY0 + 1}
    assert everything(state, "TB") == {DAY0 - 2}
    assert everything(state, "TC") == set()  # events are not what a summary keeps
    assert everything(state, taxi_day_key("T1")) == {DAY0 - 1}  # a taxi's are, by bucket
    # A summary clears the marks it holds; a batch after it marks its day again.
    upto = state.mark_sequence()
    state.save_day_summaries("TA1", {DAY0: b"s", DAY0 + 1: b"s"}, upto)
    assert everything(state, "TA1") == set()
    store.write([elec(2, kwh=3.0)])  # a duplicate again
    assert store.flush(20)
    assert state.mark_sequence() > upto
    assert everything(state, "TA1") == {DAY0}


def test_marks_wait_for_influxdb_and_survive_a_restart_in_the_spool(
    influxdb: InfluxStack, tmp_path: Path, state: SqliteState
) -> None:
    influxdb.server.stop()
    first = InfluxStore(influx_settings(influxdb), tmp_path / "spool", Metrics(), state)
    first.write([elec(i) for i in range(3)])
    wait_for(lambda: first.health().detail != "influxdb reachable", 20, "the store to see it down")
    # Spooled and acknowledged, not readable: no mark yet (a pass would summarise too early).
    assert state.mark_sequence() == 0 and everything(state, "TA1") == set()
    first.close()  # what is left stays on disk, with the days it writes
    influxdb.server.start()
    second = InfluxStore(influx_settings(influxdb), tmp_path / "spool", Metrics(), state)
    assert second.flush(30)
    assert everything(state, "TA1") == {DAY0}
    rows = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading")
    assert rows[0]["count"] == 3  # the note travelled in the spool, not to InfluxDB
    second.close()


def test_a_store_whose_marks_cannot_be_written_keeps_the_batch(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    state = SqliteState(tmp_path / "state.sqlite")
    state.close()  # every mark now fails
    store = InfluxStore(influx_settings(influxdb), tmp_path / "spool", Metrics(), state)
    store.write([elec(0)])
    wait_for(lambda: "not marked" in store.health().detail, 20, "the failed mark")
    assert store.health().buffered_points == 1  # kept, sent and marked again later
    store.close()
    embedded = EmbeddedStore(tmp_path / "telemetry.sqlite", Metrics(), marks=state)
    with pytest.raises(Exception, match="closed"):
        embedded.write([elec(0)])  # the worker writes the batch again, acknowledges nothing
    embedded.close()


def test_summaries_clear_only_the_marks_they_hold(state: SqliteState) -> None:
    state.mark_days({("TA1", 10), ("TA1", 11)})
    before = state.mark_sequence()
    state.mark_days({("TA1", 11)})  # written again after the pass read `before`
    state.save_day_summaries("TA1", {10: b"a", 11: b"a"}, before)
    assert everything(state, "TA1") == {11}
    assert state.day_summaries("TA1", 0, 100) == {10: b"a", 11: b"a"}
    # A pass that read earlier saves later: it does not replace what is newer.
    state.save_day_summaries("TA1", {11: b"new"}, state.mark_sequence())
    state.save_day_summaries("TA1", {11: b"old"}, before)
    assert state.day_summaries("TA1", 11, 11) == {11: b"new"}
    assert everything(state, "TA1") == set()
    state.mark_days({("TA1", 3), ("TB", 12)})
    assert state.forget_days(11) == 1
    assert state.day_summaries("TA1", 0, 100) == {11: b"new"}
    assert everything(state, "TA1") == set() and everything(state, "TB") == {12}


def test_a_shared_state_away_holds_no_telemetry_back_and_loses_no_mark(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    """On a cluster the marks go to PostgreSQL; while it is away InfluxDB still takes
    every batch (the spool empties) and the marks wait on disk, through a restart."""
    _require(find_postgres, "initdb", "postgresql")
    pg = PostgreSQL()  # its own server: this test stops it
    try:
        pg.start()
        db = Database(pg.create_database("marks"), timeout_s=1, retry_s=0.2)
        state = PostgresState(db, "w1")
        pending = tmp_path / "pending-marks.json"
        metrics = Metrics()
        marks = PendingMarks(state, pending, metrics)
        store = InfluxStore(influx_settings(influxdb), tmp_path / "spool", metrics, marks)
        store.write([elec(0)])
        assert store.flush(30)
        assert state.marked_days("TA1", 0, 10**9) == {DAY0}
        before = state.mark_sequence()

        pg.stop()
        store.write([elec(40, district="TA2"), elec(41, meter="M2", district="TA2")])
        assert store.flush(30), store.health().detail  # InfluxDB took it: nothing held back
        assert store.health().buffered_points == 0
        assert marks.pending == 1 and pending.exists()
        assert metrics.registry.get_sample_value("monitor_day_marks_pending") == 1
        store.write([elec(200)])  # another day: it waits beside the first
        assert store.flush(30)
        assert marks.pending == 2
        store.close()

        # A restart meanwhile: the new process finds the marks on disk.
        again = PendingMarks(state, pending, Metrics())
        assert again.pending == 2
        again.retry()  # still away: kept
        assert again.pending == 2 and pending.exists()

        pg.start()

        def delivered() -> bool:
            again.retry()
            return again.pending == 0

        wait_for(delivered, 30, "the marks delivered")
        assert not pending.exists()
        assert state.marked_days("TA2", 0, 10**9) == {DAY0 + 1}
        assert state.marked_days("TA1", 0, 10**9) == {DAY0, DAY0 + 2}
        # Numbered after every summary made before them: their days are read again.
        assert state.mark_sequence() > before
        rows = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading")
        assert rows[0]["count"] == 4
        db.close()
    finally:
        pg.cleanup()


def test_a_trip_resent_with_another_end_time_marks_the_day_it_leaves_too(
    tmp_path: Path, state: SqliteState
) -> None:
    # The embedded store keys a trip by its id: the re-sent copy replaces the stored row,
    # so the day that held it changed as well (InfluxDB keeps both copies: nothing left).
    embedded = EmbeddedStore(tmp_path / "telemetry.sqlite", Metrics(), marks=state)
    trip = Record(TAXI_TRIP, "T1", "", BASE_MS, {"trip_id": "x", "meter_km": 1.0})
    embedded.write([trip])
    state.save_day_summaries(taxi_day_key("T1"), {DAY0: b"s"}, state.mark_sequence())
    assert everything(state, taxi_day_key("T1")) == set()
    embedded.write([Record(TAXI_TRIP, "T1", "", BASE_MS + DAY_MS, dict(trip.values))])
    assert everything(state, taxi_day_key("T1")) == {DAY0, DAY0 + 1}
    embedded.close()
