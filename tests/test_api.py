"""The HTTP API over real SQLite state and the embedded store (no broker needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.core.registry import COLUMNS
from monitor.core.rulebook import load_rules
from monitor.core.schema import ELEC_READING, TAXI_TRIP, Record
from monitor.evaluation.runner import Evaluator
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS, received_live

CSV = (
    ",".join(COLUMNS)
    + "\n"
    + "\n".join(
        [
            f"E{i:03d},elec,customer,TA{i % 3},LOT-{i % 2},Acme,DDS,2,2019-01-01,2019-01-01,8,"
            for i in range(25)
        ]
        + ["T001,taxi,,,TX-1,Fare,FM,,2025-01-01,2025-01-01,1,沪A00001"]
    )
    + "\n"
)


class Api:
    def __init__(self, tmp: Path) -> None:
        self.metrics = Metrics()
        self.state = SqliteState(tmp / "state.sqlite")
        self.store = EmbeddedStore(tmp / "telemetry.sqlite", self.metrics)
        self.connected = True
        book = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml")
        ctx = ApiContext(
            load_settings(tmp / "none", {}),
            self.state,
            self.store,
            self.metrics,
            lambda: self.connected,
            Evaluator(self.store, self.state),
            lambda: book,
        )
        self.ctx = ctx
        self.client = TestClient(create_app(ctx))

    def ingest(self, records: list[Record]) -> None:
        self.store.write(records)
        self.state.note_seen(summarise_seen(records, received_live(records)))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = Api(tmp_path)
    yield a
    a.state.close()
    a.store.close()


def test_registry_csv_then_meters_list_paginates(api: Api) -> None:
    r = api.client.post("/api/registry", content=CSV, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 26, "updated": 0}
    r = api.client.post("/api/registry", content=CSV, headers={"content-type": "text/csv"})
    assert r.json() == {"added": 0, "updated": 26}
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/api/meters", params=params).json()
        ids += [m["meter_id"] for m in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert ids == sorted([f"E{i:03d}" for i in range(25)] + ["T001"])
    elec_ta1 = api.client.get("/api/meters", params={"kind": "elec", "district": "TA1"}).json()
    assert {m["meter_id"] for m in elec_ta1["items"]} == {
        f"E{i:03d}" for i in range(25) if i % 3 == 1
    }
    lot = api.client.get("/api/meters", params={"lot": "LOT-0", "limit": 1000}).json()["items"]
    assert len(lot) == 13 and all(m["decision"] is None for m in lot)


def test_unregistered_senders_are_listed(api: Api) -> None:
    api.client.post("/api/registry", content=CSV, headers={"content-type": "text/csv"})
    api.ingest([Record(ELEC_READING, "GHOST", "TA9", BASE_MS, {"energy_kwh": 1.0})])
    items = api.client.get("/api/meters", params={"registered": "false"}).json()["items"]
    assert [(m["meter_id"], m["registered"], m["district"], m["kind"]) for m in items] == [
        ("GHOST", False, "TA9", "elec")
    ]
    one = api.client.get("/api/meters/GHOST").json()
    assert one["registry"] is None and one["latest"]["reading"]["energy_kwh"] == 1.0
    metrics = api.client.get("/metrics").text
    assert "monitor_unregistered_meters 1.0" in metrics


def test_meter_detail_and_history(api: Api) -> None:
    api.client.post("/api/registry", content=CSV, headers={"content-type": "text/csv"})
    api.ingest(
        [
            Record(
                ELEC_READING,
                "E001",
                "TA1",
                BASE_MS + i * 900_000,
                {"energy_kwh": 10.0 + i, "voltage_v": 230.0},
            )
            for i in (2, 0, 1)
        ]
    )
    one = api.client.get("/api/meters/E001").json()
    assert one["meter_id"] == "E001" and one["kind"] == "elec"
    assert one["registry"]["lot"] == "LOT-1" and one["registry"]["due_on"] == "2027-01-01"
    assert one["latest"]["reading"]["energy_kwh"] == 12.0
    assert one["decision"] is None
    hist = api.client.get(
        "/api/meters/E001/history",
        params={"field": "energy_kwh,voltage_v", "start": "2026-03-01T00:10:00+08:00"},
    )
    assert hist.status_code == 200, hist.text
    assert [(p["ts"], p["energy_kwh"]) for p in hist.json()["points"]] == [
        ("2026-02-28T16:15:00.000Z", 11.0),
        ("2026-02-28T16:30:00.000Z", 12.0),
    ]
    api.ingest(
        [
            Record(
                TAXI_TRIP,
                "T001",
                "",
                BASE_MS,
                {"trip_id": "a", "meter_km": 3.3, "tariff_version": "v"},
            )
        ]
    )
    trips = api.client.get("/api/meters/T001/history", params={"end": BASE_MS + 1}).json()
    assert trips["measurement"] == "taxi_trip" and trips["points"][0]["meter_km"] == 3.3


def test_errors_say_what_is_wrong(api: Api) -> None:
    api.client.post("/api/registry", content=CSV, headers={"content-type": "text/csv"})
    cases = [
        ("get", "/api/meters/NOPE", {}, 404, "not in the registry"),
        ("get", "/api/meters/E001/history", {"field": "colour"}, 400, "unknown field"),
        ("get", "/api/meters/E001/history", {"start": "yesterday"}, 400, "start"),
        (
            "get",
            "/api/meters/E001/history",
            {"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
            400,
            "after start",
        ),
        ("get", "/api/meters", {"limit": 0}, 422, "limit"),
        ("get", "/api/meters", {"kind": "gas"}, 422, "kind"),
        ("get", "/api/meters", {"cursor": "!!!"}, 400, "cursor"),
    ]
    for method, path, params, status, words in cases:
        r = api.client.request(method, path, params=params)
        assert r.status_code == status, (path, params, r.text)
        assert words in r.json()["detail"], (path, r.json())


def test_registry_refusals_store_nothing(api: Api) -> None:
    bad = ",".join(COLUMNS) + "\nE1,elec,customer,TA1,L,,,2,,,8,\nE2,elec,customer,,L,,,2,,,8,\n"
    r = api.client.post("/api/registry", content=bad, headers={"content-type": "text/csv"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["line"] == 3 and "district" in r.json()["detail"]
    assert api.client.get("/api/meters").json()["items"] == []
    r = api.client.post("/api/registry", json=[{"meter_id": "T9", "kind": "taxi"}])
    assert r.status_code == 200 and r.json()["added"] == 1
    assert (
        api.client.post(
            "/api/registry", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        api.client.post(
            "/api/registry", content=b"x", headers={"content-type": "image/png"}
        ).status_code
        == 415
    )


def test_healthz_reflects_broker_and_store(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    api.connected = False
    r = api.client.get("/healthz")
    assert r.status_code == 503 and r.json()["broker_connected"] is False


def test_openapi_lists_the_contract_paths(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in (
        "/healthz",
        "/metrics",
        "/api/meters",
        "/api/meters/{meter}",
        "/api/meters/{meter}/history",
        "/api/registry",
    ):
        assert path in paths
