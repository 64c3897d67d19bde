"""Regions: the registry's optional column, one region per district and lot, the lists
filtered by region, and the cross-region view (API here, the page in test_web.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from monitor.alerts.book import AlertBook, Condition
from monitor.api.app import create_app
from monitor.core.regions import RegionIndex
from monitor.core.registry import COLUMNS, parse_csv, region_conflicts
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS
from tests.test_api import Api

REGION = {"TA0": "east", "TA1": "east", "TA2": "west"}


def registry_csv(regions: dict[str, str] = REGION) -> str:
    """30 electricity meters in 3 districts (lot = district), a taxi in region east."""
    header = ",".join(COLUMNS)
    rows = [
        f"E{i:03d},elec,customer,TA{i % 3},LOT-{i % 3},Acme,DDS,2,2019-01-01,2019-01-01,8,,"
        f"{regions.get(f'TA{i % 3}', '')}"
        for i in range(30)
    ]
    rows.append("T001,taxi,,,TX-1,Fare,FM,,2025-01-01,2025-01-01,1,沪A00001,east")
    return "\n".join([header, *rows]) + "\n"


@pytest.fixture
def api(tmp_path: Path) -> Api:
    a = Api(tmp_path)
    r = a.client.post("/api/registry", content=registry_csv(), headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    return a


def test_a_row_names_its_region_and_a_row_without_is_in_the_default_one() -> None:
    parsed = parse_csv(registry_csv({"TA0": "east"}))
    assert not parsed.errors
    index = RegionIndex.from_rows(parsed.rows)
    assert index.of("meter", "E000") == "east" and index.of("meter", "E001") == "default"
    assert index.of("district", "TA0") == "east" and index.of("lot", "LOT-2") == "default"
    assert index.regions() == ["default", "east"]
    # An unregistered meter: the region of the district it was heard in.
    assert index.of("meter", "X9", district="TA0") == "east"
    assert RegionIndex().regions() == ["default"]


def test_a_district_or_lot_split_across_regions_is_refused(api: Api) -> None:
    moved = "\n".join([",".join(COLUMNS), "E000,elec,customer,TA0,LOT-0,,,2,,,,,west"]) + "\n"
    rows = parse_csv(moved).rows
    conflicts = region_conflicts(api.state.registry_rows(), rows)
    assert conflicts == [
        "district TA0 would span regions east (E003 …), west (E000 …): give all its meters one region",
        "lot LOT-0 would span regions east (E003 …), west (E000 …): give all its meters one region",
    ]
    r = api.client.post("/api/registry", content=moved, headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "district TA0 would span regions" in r.json()["detail"]
    assert api.state.get_meter("E000").region == "east"  # type: ignore[union-attr]
    # Moving the whole district at once is fine.
    whole = registry_csv({"TA0": "west", "TA1": "east", "TA2": "west"})
    r = api.client.post("/api/registry", content=whole, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text


def test_the_cli_import_refuses_a_split_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, split = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(registry_csv(), encoding="utf-8")
    split.write_text(
        "\n".join([",".join(COLUMNS), "E000,elec,customer,TA0,LOT-0,,,2,,,,,west"]) + "\n",
        encoding="utf-8",
    )
    env = {"MONITOR_DATA_DIR": str(data), "MONITOR_CONFIG": str(tmp_path / "none")}

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "monitor", "registry", "import", str(path)],
            capture_output=True, text=True, env={**env, "PATH": ""}, check=False,
        )  # fmt: skip

    assert run(first).returncode == 0
    refused = run(split)
    assert refused.returncode == 1 and "district TA0 would span regions" in refused.stderr


def test_a_state_file_from_before_regions_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    SqliteState(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX registry_region")
    db.execute("ALTER TABLE registry DROP COLUMN region")
    db.execute("INSERT INTO registry (meter_id, kind, district) VALUES ('E1', 'elec', 'D1')")
    db.commit()
    db.close()
    state = SqliteState(path)
    row = state.get_meter("E1")
    assert row is not None and row.region is None and row.effective_region == "default"
    state.close()


def _all(api: Api, path: str, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = api.client.get(
            path, params={**params, "limit": 7, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next"]
        if cursor is None:
            return items


def test_the_meter_list_filters_by_region(api: Api) -> None:
    east = {str(m["meter_id"]) for m in _all(api, "/api/meters", region="east")}
    assert east == {f"E{i:03d}" for i in range(30) if i % 3 != 2} | {"T001"}
    west = {str(m["meter_id"]) for m in _all(api, "/api/meters", region="west")}
    assert west == {f"E{i:03d}" for i in range(30) if i % 3 == 2}
    r = api.client.get("/api/meters", params={"region": "north"})
    assert r.status_code == 422 and "regions: east, west" in r.json()["detail"]


def test_alerts_filter_by_region_across_pages(api: Api, tmp_path: Path) -> None:
    book = AlertBook(tmp_path / "state.sqlite", 86_400_000)
    conditions = [
        Condition("elec.error_limit", "elec", f"E{i:03d}", "major", "m", BASE_MS, {},
                  meter=f"E{i:03d}", lot=f"LOT-{i % 3}", district=f"TA{i % 3}")
        for i in range(30)
    ] + [
        Condition("lot.suspect_share", "lot", "LOT-2", "major", "m", BASE_MS, {}, lot="LOT-2"),
        Condition("elec.estimation.min_intervals", "district", "TA1", "major", "m", BASE_MS, {},
                  district="TA1"),
    ]  # fmt: skip
    book.observe(conditions, BASE_MS)
    with_book = Api.__new__(Api)
    with_book.__dict__.update(api.__dict__)
    with_book.client = TestClient(create_app(replace(api.ctx, alerts=book)))
    west = _all(with_book, "/api/alerts", region="west")
    assert {(a["meter"], a["lot"], a["district"]) for a in west} == {
        *((f"E{i:03d}", f"LOT-{i % 3}", f"TA{i % 3}") for i in range(30) if i % 3 == 2),
        (None, "LOT-2", None),
    }
    east = _all(with_book, "/api/alerts", region="east")
    assert len(east) == 20 + 1  # 20 meters and the district TA1
    assert len(west) + len(east) == len(_all(with_book, "/api/alerts"))
    book.close()


def test_regions_side_by_side(api: Api) -> None:
    api.client.post("/api/evaluate", params={"as_of": str(BASE_MS), "force": "true"})
    regions = _all(api, "/api/regions")
    assert [r["region"] for r in regions] == ["east", "west"]
    east, west = regions
    assert (east["meters"], east["meters_by_kind"]) == (21, {"elec": 20, "taxi": 1})
    assert (west["meters"], west["districts"], west["lots"]) == (10, 1, 1)
    assert (east["districts"], east["lots"]) == (2, 3)  # LOT-0, LOT-1 and the taxis' TX-1
    assert sum(west["meter_states"].values()) == 10
    page = api.client.get("/api/regions", params={"limit": 1}).json()
    assert [r["region"] for r in page["items"]] == ["east"] and page["next"]
    assert api.client.get("/api/regions/west").json() == west
    missing = api.client.get("/api/regions/north")
    assert missing.status_code == 404 and "regions: east, west" in missing.json()["detail"]


def test_a_token_scoped_to_a_region_sees_its_meters_districts_lots_and_alerts(
    tmp_path: Path,
) -> None:
    from monitor.api.scope import Scopes
    from monitor.platform.access import Principal

    state = SqliteState(tmp_path / "state.sqlite")
    state.upsert_meters(parse_csv(registry_csv()).rows)
    scopes = Scopes(state)
    east = Principal("utility-east", "utility", frozenset({"east"}))
    assert scopes.meter(east, "E000") and not scopes.meter(east, "E002")  # TA0 east, TA2 west
    assert scopes.district(east, "TA1") and not scopes.district(east, "TA2")
    assert scopes.lot(east, "LOT-0") and not scopes.lot(east, "LOT-2")
    assert scopes.listed_meter(east, "E001", "TA1", "LOT-1")
    assert not scopes.listed_meter(east, "E005", "TA2", "LOT-2")
    assert scopes.alert(east, {"meter": None, "lot": None, "district": "TA0"})
    assert not scopes.alert(east, {"meter": "E002", "lot": "LOT-2", "district": "TA2"})
    assert scopes.row_in_scope(east, "TA9", None, "east")
    assert not scopes.row_in_scope(east, "TA9", None, "west")
    state.close()
