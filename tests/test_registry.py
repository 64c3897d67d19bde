"""Registry CSV (CONTRACT §3): rows, refusals with line numbers, due dates."""

from __future__ import annotations

from datetime import date

from monitor.registry import COLUMNS, parse_csv, parse_rows

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
