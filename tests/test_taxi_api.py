"""Work orders and tariff rollouts through the API (real SQLite state and store)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.core.clock import ms_to_datetime, parse_ts
from monitor.core.rulebook import load_rules
from monitor.core.schema import TAXI_EVENT, TAXI_STATUS, Record
from monitor.evaluation.runner import Evaluator
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from monitor.taxi.tariff import rate_set_at
from tests.helpers import received_live

REPO = Path(__file__).resolve().parent.parent
TARIFF = yaml.safe_load((REPO / "config" / "tariffs.yaml").read_text())["SH-2022"]
EFFECTIVE = "2026-07-01T00:00:00+08:00"
EFF_MS = parse_ts(EFFECTIVE)
HOUR = 3_600_000


class Taxi:
    def __init__(self, tmp: Path) -> None:
        self.state = SqliteState(tmp / "state.sqlite")
        self.store = EmbeddedStore(tmp / "telemetry.sqlite", Metrics())
        self.sent: list[tuple[str, bytes, bool]] = []
        book = load_rules(REPO / "config" / "rules.yaml")
        self.evaluator = Evaluator(self.store, self.state)
        ctx = ApiContext(
            load_settings(tmp / "none", {}),
            self.state,
            self.store,
            Metrics(),
            lambda: True,
            self.evaluator,
            lambda: book,
            lambda t, p, r: self.sent.append((t, p, r)),
        )
        self.client = TestClient(create_app(ctx))
        self.client.post(
            "/api/registry", json=[{"meter_id": f"T{i}", "kind": "taxi"} for i in range(3)]
        )

    def report(self, records: list[Record]) -> None:
        self.store.write(records)
        self.state.note_seen(summarise_seen(records, received_live(records)))


@pytest.fixture
def taxi(tmp_path: Path) -> Iterator[Taxi]:
    t = Taxi(tmp_path)
    yield t
    t.state.close()
    t.store.close()


def body(**changes: object) -> dict[str, object]:
    out = {**json.loads(json.dumps(TARIFF, default=str)), "effective_from": EFFECTIVE}
    out.update(changes)
    return out


def test_rollout_pushes_and_tracks_pending_applied_overdue(taxi: Taxi) -> None:
    r = taxi.client.post("/api/tariffs/SH-2026/rollout", json=body())
    assert r.status_code == 201, r.text
    assert r.json()["targeted"] == 3 and r.json()["pending"] == 3
    assert r.json()["deadline"] == "2026-07-01T16:00:00.000Z"  # effective + 24 h
    assert [(t, retain) for t, _, retain in taxi.sent] == [
        (f"meters/taxi/T{i}/cmd/tariff", True) for i in range(3)
    ]
    command = json.loads(taxi.sent[0][1])
    assert command["version"] == "SH-2026" and command["tariff"]["day"]["per_km"] == 2.7
    taxi.report(
        [
            Record(
                TAXI_EVENT,
                "T0",
                "",
                EFF_MS + 60_000,
                {"code": "tariff_applied", "detail": "SH-2026"},
            ),
            Record(
                TAXI_STATUS,
                "T1",
                "",
                EFF_MS + 2 * HOUR,
                {"seal": "intact", "tariff_version": "SH-2026"},
            ),
            Record(
                TAXI_STATUS,
                "T2",
                "",
                EFF_MS + 2 * HOUR,
                {"seal": "intact", "tariff_version": "SH-2022"},
            ),
        ]
    )
    mid = taxi.client.get("/api/tariffs/SH-2026").json()  # as of latest telemetry: +2 h
    assert {m["meter"]: m["status"] for m in mid["meters"]} == {
        "T0": "applied",
        "T1": "applied",
        "T2": "pending",
    }
    assert mid["meters"][0]["evidence"] == "event"
    late = taxi.client.get("/api/tariffs/SH-2026", params={"as_of": EFF_MS + 25 * HOUR}).json()
    assert (late["applied"], late["pending"], late["overdue"]) == (2, 0, 1)
    early = taxi.client.get("/api/tariffs/SH-2026", params={"as_of": EFF_MS}).json()
    assert early["applied"] == 0  # event time: nothing had been applied yet then


def test_a_rollout_written_in_utc_names_the_scheduling_zone(taxi: Taxi) -> None:
    # A Shanghai tariff whose effective_from was written with Z: a trip ending at
    # 11:32 Shanghai (03:32Z) is a day trip, not a night one.
    payload = {k: v for k, v in body(effective_from="2026-07-01T00:00:00Z").items()}
    payload.pop("timezone", None)
    r = taxi.client.post("/api/tariffs/SH-UTC/rollout", json=payload)
    assert r.status_code == 201, r.text
    command = json.loads(taxi.sent[0][1])
    assert command["tariff"]["timezone"] == "Asia/Shanghai"  # named before it is sent
    stored = taxi.state.tariff("SH-UTC")
    assert stored is not None and stored.body["timezone"] == "Asia/Shanghai"
    tariff = taxi.evaluator.tariffs()["SH-UTC"]
    assert rate_set_at(tariff, ms_to_datetime(parse_ts("2026-07-02T03:32:00Z"))) is tariff.day
    explicit = taxi.client.post(
        "/api/tariffs/SH-TYO/rollout", json={**payload, "timezone": "Asia/Tokyo"}
    )
    tokyo = taxi.state.tariff("SH-TYO")
    assert explicit.status_code == 201 and tokyo is not None
    assert tokyo.body["timezone"] == "Asia/Tokyo"
    bad = taxi.client.post("/api/tariffs/SH-BAD/rollout", json={**payload, "timezone": "+08"})
    assert bad.status_code == 422 and "timezone" in bad.json()["detail"]


def test_bad_tariff_bodies_are_refused_and_nothing_is_stored(taxi: Taxi) -> None:
    cases = [
        (body(effective_from="2026-07-01T00:00:00"), 422, "effective_from"),
        (body(day={**TARIFF["day"], "per_km": -1}), 422, "day.per_km"),
        ({k: v for k, v in body().items() if k != "night"}, 422, "night"),
        (body(colour="red"), 422, "colour"),
        (body(meters=["NOPE"]), 422, "NOPE"),
        (body(meters=[]), 422, "meters"),
    ]
    for payload, status, words in cases:
        r = taxi.client.post("/api/tariffs/BAD/rollout", json=payload)
        assert r.status_code == status and words in r.json()["detail"], (payload, r.text)
    assert taxi.client.post("/api/tariffs/BAD/rollout", content=b"[1]").status_code == 400
    assert taxi.client.post("/api/tariffs/BAD/rollout", content=b"{").status_code == 400
    assert taxi.client.get("/api/tariffs/BAD").status_code == 404
    assert taxi.sent == []
    ok = taxi.client.post("/api/tariffs/V2/rollout", json=body(meters=["T1"]))
    assert ok.status_code == 201 and ok.json()["targeted"] == 1
    assert taxi.client.post("/api/tariffs/V2/rollout", json=body()).status_code == 409


def test_work_orders(taxi: Taxi) -> None:
    r = taxi.client.post(
        "/api/workorders",
        json={
            "meter": "T1",
            "from": "2026-07-01T08:00:00+08:00",
            "to": "2026-07-01T12:00:00+08:00",
            "reason": "seal replacement after repair",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["from"] == "2026-07-01T00:00:00.000Z"
    for i in range(3):
        r = taxi.client.post(
            "/api/workorders",
            json={
                "meter": "T2",
                "from": str(EFF_MS + i * HOUR),
                "to": str(EFF_MS + (i + 1) * HOUR),
                "reason": f"calibration {i}",
            },
        )
        assert r.status_code == 201, r.text
    listed = taxi.client.get("/api/workorders", params={"meter": "T1"}).json()
    assert [w["reason"] for w in listed["items"]] == ["seal replacement after repair"]
    page = taxi.client.get("/api/workorders", params={"meter": "T2", "limit": 2}).json()
    rest = taxi.client.get("/api/workorders", params={"meter": "T2", "cursor": page["next"]}).json()
    assert [w["reason"] for w in page["items"] + rest["items"]] == [
        f"calibration {i}" for i in range(3)
    ]
    assert rest["next"] is None
    bad = taxi.client.post(
        "/api/workorders",
        json={
            "meter": "T1",
            "from": "2026-07-02T00:00:00Z",
            "to": "2026-07-01T00:00:00Z",
            "reason": "oops",
        },
    )
    assert bad.status_code == 400 and "after" in bad.json()["detail"]
    missing = taxi.client.post("/api/workorders", json={"meter": "T1", "reason": "no times"})
    assert missing.status_code == 422 and "from" in missing.json()["detail"]
