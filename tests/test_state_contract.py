"""One contract for every state store: the same tests over the embedded SQLite and the
PostgreSQL store (a fresh schema of a real server per test).

Each test takes `state` (a `StateStore`, parametrised over the implementations) and
`reopen()` where it needs a second handle on the same state, as a second worker (or
`monitor registry import`) has. A backend passes when it answers what the others do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from monitor.core.ports import (
    MeterFilter,
    Mismatch,
    SampleRow,
    SeenUpdate,
    StateStore,
)
from monitor.core.registry import MeterRow
from monitor.core.schema import ELEC_READING, TAXI_STATUS, Record
from monitor.store.postgres.db import Database
from monitor.store.postgres.state import PostgresState
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS

Reopen = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopen]:
    """Opens handles on one state (closed at the end of the test)."""
    opened: list[StateStore] = []
    databases: list[Database] = []
    if request.param == "sqlite":

        def reopen() -> StateStore:
            opened.append(SqliteState(tmp_path / "state.sqlite"))
            return opened[-1]
    else:
        url: str = request.getfixturevalue("postgres_url")

        def reopen() -> StateStore:
            databases.append(Database(url))
            opened.append(PostgresState(databases[-1]))
            return opened[-1]

    yield reopen
    for s in opened:
        s.close()
    for db in databases:
        db.close()


@pytest.fixture
def state(backend: Reopen) -> StateStore:
    return backend()


def elec(meter: str, district: str = "TA1", **kw: object) -> MeterRow:
    return MeterRow.model_validate({"meter_id": meter, "kind": "elec", "district": district, **kw})


def taxi(meter: str, **kw: object) -> MeterRow:
    return MeterRow.model_validate({"meter_id": meter, "kind": "taxi", **kw})


def decision(
    meter: str, verdict: str = "keep", state: str = "normal", kind: str = "elec"
) -> dict[str, Any]:
    return {
        "id": meter,
        "kind": kind,
        "decision": verdict,
        "state": state,
        "as_of": "2026-03-01T00:00:00Z",
        "rules_version": "r1",
        "evidence": {"error_pct": 0.12345678901234, "ci": [1.5, -2.25]},
        "reasons": [
            {
                "rule": "elec.error_limit",
                "value": 4.5,
                "threshold": 2.0,
                "detail": "beyond",
                "severity": "major",
            }
        ],
    }


# -- registry -------------------------------------------------------------------


def test_upsert_counts_added_and_updated_and_moves_the_version(backend: Reopen) -> None:
    state, other = backend(), backend()
    v0 = other.registry_version()
    assert state.upsert_meters([elec("E1"), elec("E2"), taxi("T1")]) == (3, 0)
    v1 = other.registry_version()  # another handle (worker) sees the change
    assert v1 != v0
    assert state.upsert_meters([elec("E2", lot="L1"), elec("E3")]) == (1, 1)
    assert other.registry_version() not in (v0, v1)
    assert other.get_meter("E2") == elec("E2", lot="L1")
    assert other.get_meter("nope") is None
    assert [r.meter_id for r in other.registry_rows()] == ["E1", "E2", "E3", "T1"]
    assert [r.meter_id for r in other.registry_rows("taxi")] == ["T1"]


def test_upserting_the_same_rows_again_changes_nothing_but_the_version(state: StateStore) -> None:
    rows = [elec("E1", installed_on="2020-01-01", period_years=8), taxi("T1")]
    state.upsert_meters(rows)
    assert state.upsert_meters(rows) == (0, 2)
    assert state.registry_rows() == sorted(rows, key=lambda r: r.meter_id)


def test_regions_and_feeder_topology_come_back_as_written(backend: Reopen) -> None:
    state, other = backend(), backend()
    rows = [
        elec("E1", region="north", feeder_branch="B1", feeder_distance_m=120.5),
        elec("E2", region="north"),
        taxi("T1", region="south"),
    ]
    state.upsert_meters(rows)
    assert other.registry_rows() == rows
    assert other.get_meter("E1") == rows[0]


def test_the_fleet_list_filters_by_region_an_unregistered_meter_by_its_district(
    state: StateStore,
) -> None:
    state.upsert_meters([elec("E1", "TA1", region="north"), elec("E3", "TA2"), taxi("T1")])
    state.note_seen({"E2": SeenUpdate("elec", "TA1", 2, 7, 4, 1.0)})  # heard in TA1
    north = state.list_meters(MeterFilter(region="north"), None, 9)
    assert [m.meter_id for m in north] == ["E1", "E2"]
    default = state.list_meters(MeterFilter(region="default"), None, 9)
    assert [m.meter_id for m in default] == ["E3", "T1"]


def test_registry_districts_are_the_electricity_meters_with_a_district(state: StateStore) -> None:
    state.upsert_meters([elec("E1", "TA1"), elec("E2", "TA2"), taxi("T1")])
    assert state.registry_districts() == {"E1": "TA1", "E2": "TA2"}


def test_due_by_lists_the_earliest_first_and_counts_all(state: StateStore) -> None:
    state.upsert_meters(
        [
            elec("E1", installed_on="2019-05-01", period_years=8),  # 2027-05-01
            elec("E2", installed_on="2018-01-10", period_years=8),  # 2026-01-10
            elec("E3", verified_on="2024-02-29", period_years=2),  # 2026-02-28
            taxi("T1"),  # no due date
        ]
    )
    rows, total = state.due_by(date(2026, 12, 31), 1)
    assert total == 2
    assert [(r.meter_id, r.due_on) for r in rows] == [("E2", date(2026, 1, 10))]
    rows, total = state.due_by(date(2030, 1, 1), 10)
    assert [r.meter_id for r in rows] == ["E2", "E3", "E1"] and total == 3


# -- telemetry presence ------------------------------------------------------------


def test_meters_seen_merge_spans_counts_and_districts(state: StateStore) -> None:
    state.note_seen({"E1": SeenUpdate("elec", "TA1", 1_000, 2_000, 3, 10.0)})
    state.note_seen({"E1": SeenUpdate("elec", "", 500, 1_500, 2, 11.0)})
    assert state.flush_seen() == 1
    state.note_seen({"E1": SeenUpdate("elec", "TA2", 3_000, 4_000, 1, 9.0)})
    assert state.seen("E1") == {
        "kind": "elec",
        "district": "TA2",
        "first_ts": 500,
        "last_ts": 4_000,
        "messages": 6,
    }
    assert state.seen("nope") is None
    assert state.last_received() == 11.0


def test_meters_seen_by_two_workers_add_up(backend: Reopen) -> None:
    first, second = backend(), backend()
    for i in range(3):
        first.note_seen({"E1": SeenUpdate("elec", "TA1", i, i, 10, 1.0)})
        second.note_seen({"E1": SeenUpdate("elec", "TA1", 100 + i, 100 + i, 5, 2.0)})
        first.flush_seen()
        second.flush_seen()
    seen = first.seen("E1")
    assert seen is not None
    assert (seen["messages"], seen["first_ts"], seen["last_ts"]) == (45, 0, 102)


def test_note_records_counts_each_message_and_reads_flush_first(state: StateStore) -> None:
    records = [
        Record(ELEC_READING, "E1", "TA1", BASE_MS + i * 900_000, {"energy_kwh": 1.0})
        for i in range(4)
    ] + [Record(TAXI_STATUS, "T1", "", BASE_MS, {"fare_total": 1.0})]
    state.note_records(records, received_at=BASE_MS / 1000 + 3600)
    seen = state.all_seen()  # no explicit flush: a read sees what was noted
    assert seen["E1"].last_ts == BASE_MS + 3 * 900_000 and seen["E1"].district == "TA1"
    assert seen["T1"].kind == "taxi" and seen["T1"].district is None
    assert set(state.all_seen("taxi")) == {"T1"}
    assert state.latest_event_ts() == BASE_MS + 3 * 900_000


def test_latest_event_time_never_passes_the_receive_clock(state: StateStore) -> None:
    # A meter whose clock runs a day ahead does not pull `as_of` into the future.
    state.note_seen(
        {"E1": SeenUpdate("elec", "TA1", BASE_MS, BASE_MS + 86_400_000, 1, BASE_MS / 1000)}
    )
    state.note_seen({"E2": SeenUpdate("elec", "TA1", BASE_MS, BASE_MS - 5, 1, BASE_MS / 1000)})
    assert state.latest_event_ts() == BASE_MS


def test_unregistered_meters_are_counted(state: StateStore) -> None:
    state.upsert_meters([elec("E1")])
    state.note_seen({m: SeenUpdate("elec", "TA1", 1, 1, 1, 1.0) for m in ("E1", "E2", "E3")})
    assert state.count_unregistered() == 2


def test_district_mismatches_count_per_meter_and_foreign_district(state: StateStore) -> None:
    state.note_mismatches(
        [
            Mismatch("E1", "TA9", "TA1", 2_000, 5.0),
            Mismatch("E1", "TA9", "TA1", 1_000, 4.0),
            Mismatch("E1", "TA8", "TA1", 3_000, 6.0),
        ]
    )
    rows = state.mismatches()
    assert [(r.meter, r.topic_district, r.messages, r.first_ts, r.last_ts) for r in rows] == [
        ("E1", "TA8", 1, 3_000, 3_000),
        ("E1", "TA9", 2, 1_000, 2_000),
    ]
    assert [r.topic_district for r in state.mismatches(min_messages=2)] == ["TA9"]
    assert rows[1].last_received == 5.0


# -- decisions and districts ----------------------------------------------------------


def test_decisions_are_upserted_and_come_back_byte_for_byte(backend: Reopen) -> None:
    state, other = backend(), backend()
    state.save_decisions("meter", [decision("E2", "resample", "suspect"), decision("E1")])
    state.save_decisions("meter", [decision("E1", "replace", "faulty")])  # replaces
    state.save_decisions("lot", [decision("L1", "extend", kind="lot")])
    body = other.decision("meter", "E1")
    assert body == decision("E1", "replace", "faulty")
    assert other.decision("lot", "E1") is None
    assert [b["id"] for b in other.decisions_where("meter", "resample")] == ["E2"]
    assert other.decision_counts() == [
        {"kind": "elec", "state": "faulty", "decision": "replace", "n": 1},
        {"kind": "elec", "state": "suspect", "decision": "resample", "n": 1},
    ]


def test_districts_list_by_name_after_a_cursor_and_by_gates(state: StateStore) -> None:
    for name, passed in (("TA2", True), ("TA1", False), ("TA10", True), ("ta0", None)):
        gates = None if passed is None else {"passed": passed}
        state.save_district(name, "2026-03-01T00:00:00Z", {"district": name, "gates": gates})
    state.save_district(
        "TA1", "2026-03-02T00:00:00Z", {"district": "TA1", "gates": {"passed": True}}
    )
    names = [b["district"] for b in state.list_districts(None, 10)]
    assert names == ["TA1", "TA10", "TA2", "ta0"]  # byte order, whatever the locale
    assert [b["district"] for b in state.list_districts("TA10", 1)] == ["TA2"]
    assert [b["district"] for b in state.list_districts(None, 10, False)] == ["ta0"]
    assert [b["district"] for b in state.list_districts(None, 10, True)] == ["TA1", "TA10", "TA2"]
    assert state.district("TA1") == {"district": "TA1", "gates": {"passed": True}}
    assert state.district("nope") is None


# -- lot samples -------------------------------------------------------------------------


def test_sample_results_replace_earlier_ones(state: StateStore) -> None:
    state.save_sample_results("L1", [SampleRow("E2", 0.5, True), SampleRow("E1", None, False)])
    state.save_sample_results("L1", [SampleRow("E2", 3.5, False)])
    state.save_sample_results("L2", [SampleRow("E9", 0.1, True)])
    assert state.sample_results("L1") == [
        SampleRow("E1", None, False),
        SampleRow("E2", 3.5, False),
    ]


# -- taxi ledger ------------------------------------------------------------------------


def test_work_orders_by_id_and_meter_and_the_same_order_twice_is_one(state: StateStore) -> None:
    first = state.add_workorder("T1", 1_000, 2_000, "seal replaced")
    second = state.add_workorder("T2", 1_500, 2_500, "tariff update")
    again = state.add_workorder("T1", 1_000, 2_000, "seal replaced")  # a retried request
    assert again == first and second > first
    rows = state.workorders()
    assert [(r.id, r.meter, r.start_ms, r.end_ms, r.reason) for r in rows] == [
        (first, "T1", 1_000, 2_000, "seal replaced"),
        (second, "T2", 1_500, 2_500, "tariff update"),
    ]
    assert rows[0].created_at.endswith("Z")
    assert [r.meter for r in state.workorders(meter="T2")] == ["T2"]
    assert [r.id for r in state.workorders(after_id=first)] == [second]
    assert len(state.workorders(limit=1)) == 1


def test_a_tariff_version_is_rolled_out_once(backend: Reopen) -> None:
    state, other = backend(), backend()
    body = {"currency": "CNY", "flag_fall": 13.0}
    assert state.save_tariff("v1", body, 1_000, 2_000, ["T1", "T2"])
    assert not other.save_tariff("v1", {"other": 1}, 5, 6, [])  # a second worker: refused
    found = other.tariff("v1")
    assert found is not None
    assert (found.body, found.effective_from_ms, found.deadline_ms, found.meters) == (
        body,
        1_000,
        2_000,
        ["T1", "T2"],
    )
    assert other.tariff("v2") is None
    state.save_tariff("v0", {"a": 1}, 0, 1, [])
    assert other.tariff_bodies() == {"v1": body, "v0": {"a": 1}}
    assert sorted(other.tariff_versions()) == ["v0", "v1"]


# -- fleet queries --------------------------------------------------------------------------


def test_the_fleet_list_joins_registry_presence_and_decisions(state: StateStore) -> None:
    state.upsert_meters([elec("E1", "TA1", lot="L1"), elec("E3", "TA2"), taxi("T1")])
    state.note_seen(
        {
            "E1": SeenUpdate("elec", "TA1", 1, 5, 3, 1.0),
            "E2": SeenUpdate("elec", "TA9", 2, 7, 4, 1.0),  # seen, not registered
        }
    )
    state.save_decisions("meter", [decision("E1", "resample", "suspect")])
    everything = state.list_meters(MeterFilter(), None, 100)
    assert [(m.meter_id, m.kind, m.registered, m.district, m.messages) for m in everything] == [
        ("E1", "elec", True, "TA1", 3),
        ("E2", "elec", False, "TA9", 4),
        ("E3", "elec", True, "TA2", 0),
        ("T1", "taxi", True, None, 0),
    ]
    assert everything[0].decision == "resample" and everything[0].lot == "L1"
    assert everything[0].error_pct == 0.12345678901234
    assert everything[0].reason == decision("E1")["reasons"][0]
    assert list(everything[0].reason or {}) == ["rule", "value", "threshold", "detail", "severity"]
    assert (everything[1].error_pct, everything[1].reason) == (None, None)
    assert everything[2].last_ts is None
    page = state.list_meters(MeterFilter(kind="elec"), "E1", 1)
    assert [m.meter_id for m in page] == ["E2"]
    assert [m.meter_id for m in state.list_meters(MeterFilter(registered=False), None, 9)] == ["E2"]
    assert [m.meter_id for m in state.list_meters(MeterFilter(state="suspect"), None, 9)] == ["E1"]
    assert [m.meter_id for m in state.list_meters(MeterFilter(district="TA2"), None, 9)] == ["E3"]
    assert state.kind_counts() == {"elec": 3, "taxi": 1}


def test_health_reports_a_reachable_store(state: StateStore) -> None:
    health = state.health()
    assert health.available and health.backend == state.backend


# --- changed days and day summaries (incremental passes) -------------------------------


def test_summaries_clear_only_the_marks_they_hold_in_either_store(backend: Reopen) -> None:
    state, other = backend(), backend()
    state.mark_days({("TA1", 10), ("TA1", 11)})
    before = other.mark_sequence()
    assert before > 0
    state.mark_days({("TA1", 11)})  # written again after the pass read `before`
    other.save_day_summaries("TA1", {10: b"a", 11: b"a"}, before)
    assert state.marked_days("TA1", 0, 100) == {11}
    assert state.day_summaries("TA1", 0, 100) == {10: b"a", 11: b"a"}
    # A pass that read earlier saves later: it does not replace what is newer.
    state.save_day_summaries("TA1", {11: b"new"}, state.mark_sequence())
    other.save_day_summaries("TA1", {11: b"old"}, before)
    assert state.day_summaries("TA1", 11, 11) == {11: b"new"}
    assert state.marked_days("TA1", 0, 100) == set()
    state.mark_days({("TA1", 3), ("TB", 12)})
    assert other.forget_days(11) == 1
    assert state.day_summaries("TA1", 0, 100) == {11: b"new"}
    assert state.marked_days("TA1", 0, 100) == set() and state.marked_days("TB", 0, 99) == {12}
    # Taxi keys go by the taxi window: kept from day 5 while districts' go before day 11.
    state.save_day_summaries("taxi/07", {4: b"t", 5: b"t", 9: b"t"}, state.mark_sequence())
    state.mark_days({("taxi/07", 4), ("taxi/07", 6), ("TB", 9)})
    assert other.forget_days(11, 5) == 1
    assert state.day_summaries("taxi/07", 0, 100) == {5: b"t", 9: b"t"}
    assert state.marked_days("taxi/07", 0, 99) == {6} and state.marked_days("TB", 0, 99) == {12}


def test_marks_from_two_writers_at_once_each_get_their_own_number(backend: Reopen) -> None:
    writers = [backend(), backend()]
    errors: list[BaseException] = []

    def mark(state: StateStore, district: str) -> None:
        try:
            for day in range(40):
                state.mark_days({(district, day)})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=mark, args=(w, d))
        for w, d in zip(writers, ("TA", "TB"), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reader = backend()
    assert reader.mark_sequence() == 80  # one number per batch, none lost or shared
    assert reader.marked_days("TA", 0, 99) == set(range(40)) == reader.marked_days("TB", 0, 99)
