"""Registry CSV (docs/registry.md): rows, refusals with line numbers, due dates."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

from monitor.core.registry import COLUMNS, parse_csv, parse_rows
from monitor.store.state import SqliteState

HEADER = ",".join(COLUMNS)


def test_valid_rows_parse_with_due_date() -> None:
    text = (
        f"{HEADER}\n"
        "E1,elec,customer,TA1,LOT-A,Acme,DDS1,2,2018-03-01,2018-02-01,8,\n"
        "E0,elec,master,TA1,,Acme,DTS,0.5S,2018-03-01,,6,\n"
        "T1,taxi,,,TX-2025,Fare,FM1,,2025-06-01,2025-06-01,1,沪A12345\n"
    )
    parsed = parse_csv(text)
    assert parsed.errors == []
    e1, e0, t1 = parsed.rows
    assert e1.due_on == date(2026, 2, 1)
    assert e0.effective_role == "master" and e0.due_on == date(
        2024, 3, 1
    )  # no verification: installed
    assert t1.plate == "沪A12345" and t1.effective_role is None
    assert e1.as_dict()["due_on"] == "2026-02-01"


def test_bad_rows_are_refused_with_their_line() -> None:
    text = (
        f"{HEADER}\n"
        "E1,elec,customer,TA1,L,,,2,,,8,\n"
        "E2,gas,customer,TA1,L,,,2,,,8,\n"
        "E3,elec,customer,,L,,,2,,,8,\n"
        "T1,taxi,master,,L,,,,,,1,\n"
        "E1,elec,customer,TA1,L,,,2,,,8,\n"
        "E4,elec,customer,TA1,L,,,2,2020-13-01,,8,\n"
    )
    parsed = parse_csv(text)
    assert [r.meter_id for r in parsed.rows] == ["E1"]
    lines = {e.line: e.reason for e in parsed.errors}
    assert set(lines) == {3, 4, 5, 6, 7}
    assert "kind" in lines[3]
    assert "district" in lines[4]
    assert "role" in lines[5]
    assert "twice" in lines[6]
    assert "installed_on" in lines[7]


def test_header_problems_are_reported() -> None:
    parsed = parse_csv("meter_id,colour\nE1,red\n")
    assert parsed.rows == []
    assert "missing column(s) kind" in parsed.errors[0].reason
    assert "unknown column(s) colour" in parsed.errors[0].reason


def test_subset_of_columns_and_json_rows() -> None:
    assert parse_csv("meter_id,kind,district\nE9,elec,TA9\n").rows[0].district == "TA9"
    parsed = parse_rows([{"meter_id": "T9", "kind": "taxi", "period_years": 1}])
    assert parsed.rows[0].period_years == 1


def test_state_answers_meters_due_soonest_first_also_from_an_older_file(tmp_path: Path) -> None:
    """Due dates are stored with the row; a state file from before that gets them filled."""
    parsed = parse_rows(
        [
            {
                "meter_id": "A",
                "kind": "elec",
                "district": "D1",
                "verified_on": "2020-02-29",
                "period_years": 6,
            },
            {
                "meter_id": "B",
                "kind": "elec",
                "district": "D1",
                "installed_on": "2019-05-01",
                "period_years": 8,
            },
            {"meter_id": "C", "kind": "taxi", "verified_on": "2026-01-10", "period_years": 1},
            {
                "meter_id": "D",
                "kind": "elec",
                "district": "D1",
                "verified_on": "2026-01-10",
            },  # no period: not due
        ]
    )
    assert parsed.errors == []
    rows = parsed.rows
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)  # the registry table as it was before the due_on column
    db.execute(
        f"CREATE TABLE registry ({', '.join(c + (' TEXT PRIMARY KEY' if c == 'meter_id' else '') for c in COLUMNS)}, "
        "updated_at TEXT)"
    )
    db.executemany(
        f"INSERT INTO registry ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
        [tuple(r.model_dump(mode="json")[c] for c in COLUMNS) for r in rows],
    )
    db.commit()
    db.close()
    fresh = SqliteState(tmp_path / "new.sqlite")
    fresh.upsert_meters(rows)
    for state in (SqliteState(old), fresh):
        due, total = state.due_by(date(2027, 6, 30), limit=2)
        # 29 Feb + 6 years is 28 Feb (MeterRow.due_on), not SQLite's 1 March.
        assert due == [
            ("A", "elec", None, date(2026, 2, 28)),
            ("C", "taxi", None, date(2027, 1, 10)),
        ]
        assert total == 3  # B (2027-05-01) is due too, beyond the limit
        assert state.due_by(date(2026, 2, 27), limit=10) == ([], 0)
        state.close()


def test_where_a_meter_hangs_on_its_feeder_is_optional() -> None:
    text = (
        "meter_id,kind,district,feeder_branch,feeder_distance_m\n"
        "E1,elec,TA1,L2,135.5\n"
        "E2,elec,TA1,L2,\n"
        "E3,elec,TA1,,\n"
        "E4,elec,TA1,,40\n"
        "T1,taxi,,L1,\n"
        "E5,elec,TA1,L1,-3\n"
    )
    parsed = parse_csv(text)
    assert [(r.meter_id, r.feeder_branch, r.feeder_distance_m) for r in parsed.rows] == [
        ("E1", "L2", 135.5),
        ("E2", "L2", None),
        ("E3", None, None),
    ]
    lines = {e.line: e.reason for e in parsed.errors}
    assert set(lines) == {5, 6, 7}
    assert "needs the feeder_branch" in lines[5]
    assert "electricity meters only" in lines[6]
    assert "feeder_distance_m" in lines[7]


def test_a_state_file_from_before_the_feeder_columns_keeps_its_rows(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    before = [c for c in COLUMNS if not c.startswith("feeder_")]
    db = sqlite3.connect(old)
    db.execute(
        f"CREATE TABLE registry ({', '.join(c + (' TEXT PRIMARY KEY' if c == 'meter_id' else '') for c in before)}, "
        "due_on TEXT)"
    )
    db.execute("INSERT INTO registry (meter_id, kind, district) VALUES ('E1', 'elec', 'D1')")
    db.commit()
    db.close()
    state = SqliteState(old)
    row = state.get_meter("E1")
    assert row is not None and row.district == "D1" and row.feeder_branch is None
    state.upsert_meters(
        parse_rows(
            [
                {
                    "meter_id": "E2",
                    "kind": "elec",
                    "district": "D1",
                    "feeder_branch": "L1",
                    "feeder_distance_m": 80,
                }
            ]
        ).rows
    )
    again = state.get_meter("E2")
    assert again is not None and (again.feeder_branch, again.feeder_distance_m) == ("L1", 80.0)
    assert {r.meter_id for r in state.registry_rows()} == {"E1", "E2"}
    state.close()
