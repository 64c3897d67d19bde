"""Taxi evaluation end to end on a simulated fleet with planted faults."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from monitor.core.clock import format_ts, ms_to_datetime
from monitor.core.decision import Stamp
from monitor.core.ports import MeterPoint
from monitor.core.registry import MeterRow, parse_rows
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import TAXI_STATUS, Record
from monitor.evaluation.runner import EvaluationResult, Evaluator
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import InfluxSettings
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.embedded import EmbeddedStore
from monitor.store.influx import InfluxStore
from monitor.store.state import SqliteState
from monitor.taxi import evaluate as evaluate_taxi
from monitor.taxi.fares import FareCache
from monitor.taxi.seals import HEARTBEAT_FIELDS, telling_heartbeats
from monitor.taxi.tariff import TariffBook, charged_fare_cny, default_tariff_book, load_tariffs
from monitor.taxi.trips import Trip
from tests.helpers import received_live
from tests.services import InfluxStack

REPO = Path(__file__).resolve().parent.parent
START = 1772294400000
DAYS = 12


@dataclass(frozen=True)
class World:
    """A simulated fleet stored and registered, and what the Evaluator made of it."""

    fleet: Fleet
    store: EmbeddedStore
    state: SqliteState
    tariffs: TariffBook
    book: RuleBook
    end_ms: int
    result: EvaluationResult


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("taxi")
    # A tight clean fleet (±0.2 % between meters) so that "clean" means clean under JJG 517.
    fleet = Fleet(
        FleetSpec(start_ms=START, districts=0, taxis=24, seed=3, taxi_bias_pct=(0.5, 0.2))
    )
    store = EmbeddedStore(tmp / "t.sqlite", Metrics())
    state = SqliteState(tmp / "s.sqlite")
    state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
    end = START + DAYS * 86_400_000
    records = [
        r
        for m in fleet.messages(START, end)
        if isinstance(r := parse_message(m.topic, m.payload), Record)
    ]
    store.write(records)
    state.note_seen(summarise_seen(records, received_live(records)))
    tariffs = load_tariffs(REPO / "config" / "tariffs.yaml")
    book = load_rules(REPO / "config" / "rules.yaml")
    result = Evaluator(store, state, tariffs=lambda: tariffs).run(end - 1, book)
    yield World(fleet, store, state, tariffs, book, end, result)
    store.close()
    state.close()


@pytest.fixture(scope="module")
def evaluated(world: World) -> tuple[Fleet, EvaluationResult]:
    return world.fleet, world.result


def planted(fleet: Fleet, fault: str) -> list[str]:
    return [m for m, t in fleet.truth().items() if fault in t.get("faults", [])]


def test_every_planted_fault_is_flagged_with_its_rule(
    evaluated: tuple[Fleet, EvaluationResult],
) -> None:
    fleet, result = evaluated
    expect = {
        "inflated_10pct": ("replace", "taxi.distance.limit"),
        "inflated_5pct": ("replace", "taxi.distance.limit"),
        "overcharge": ("resample", "taxi.fare"),
        "seal_break": ("resample", "taxi.seal"),
        "pulse_injector": ("resample", "taxi.distance"),
    }
    for fault, (decision, rule) in expect.items():
        meters = planted(fleet, fault)
        assert meters, fault
        for meter in meters:
            d = result.meters[meter]
            assert d.decision == decision, (fault, d.decision, d.reasons)
            assert any(r.rule.startswith(rule) for r in d.reasons), (fault, d.reasons)
    two = result.meters[planted(fleet, "inflated_2pct")[0]]
    assert two.decision in ("resample", "replace") and two.evidence["error_pct"] > 1.0


def test_clean_meters_are_kept_or_extended(evaluated: tuple[Fleet, EvaluationResult]) -> None:
    fleet, result = evaluated
    truth = fleet.truth()
    clean = [m for m, t in truth.items() if t["kind"] == "taxi" and not t.get("faults")]
    assert len(clean) >= 10
    for meter in clean:
        d = result.meters[meter]
        assert (d.decision, d.state) in (("keep", "normal"), ("extend", "normal")), (
            meter,
            d.reasons,
        )
        assert d.evidence["n_trips"] >= 30 and d.evidence["error_ci_pct"] is not None


def test_taxi_decision_evidence(evaluated: tuple[Fleet, EvaluationResult]) -> None:
    fleet, result = evaluated
    meter = planted(fleet, "inflated_10pct")[0]
    d = result.meters[meter].as_dict()
    assert d["kind"] == "taxi" and d["state"] == "faulty"
    ev = d["evidence"]
    assert 8 < ev["error_pct"] < 12 and ev["error_ci_pct"][0] > 1.0
    assert ev["cusum"]["alarm"] is True
    reason = d["reasons"][0]
    assert reason["rule"] == "taxi.distance.limit" and reason["detail"]


def test_the_evaluator_decides_as_every_heartbeat_and_fresh_fare_checks_do(world: World) -> None:
    """The Evaluator reads heartbeats cut to those that tell and reuses fare checks from
    its previous pass; the benchmark hands in its own points and cache. All three agree
    with a pass over every stored heartbeat with every fare priced afresh."""
    rules = world.book.rules.taxi
    evaluator = Evaluator(world.store, world.state, tariffs=lambda: world.tariffs)
    fares = FareCache()
    for days_back in (2, 0):  # a first pass fills the caches, the second reuses them
        as_of = world.end_ms - 1 - days_back * 86_400_000
        start = evaluate_taxi.window_start(as_of, rules)
        stamp = Stamp(format_ts(as_of), world.book.version)
        data = evaluate_taxi.load(world.store, world.state, start, as_of)
        every: dict[str, list[MeterPoint]] = {}
        for point in world.store.points(TAXI_STATUS, start, as_of):
            every.setdefault(point.meter, []).append(point)
        assert sum(map(len, every.values())) > 20 * sum(map(len, data.status.values()))
        expected = evaluate_taxi.evaluate(
            world.store,
            world.state,
            world.tariffs,
            rules,
            as_of,
            stamp,
            replace(data, status=every),
        )
        got = evaluator.run(as_of, world.book, record=False).meters
        mirror = evaluate_taxi.evaluate(
            world.store, world.state, world.tariffs, rules, as_of, stamp, data, fares
        )
        taxis = {m: d.as_dict() for m, d in expected.items()}
        assert len(taxis) == 24
        assert {m: d.as_dict() for m, d in got.items() if d.kind == "taxi"} == taxis
        assert {m: d.as_dict() for m, d in mirror.items()} == taxis
    # the seal break is in there, its run of broken heartbeats counted in full
    broken = expected[planted(world.fleet, "seal_break")[0]]
    assert any(
        r.rule == "taxi.seal.heartbeat" and "heartbeats)" in r.detail for r in broken.reasons
    )


CST = timezone(timedelta(hours=8))
T0 = int(datetime(2026, 3, 1, 8, 0, tzinfo=CST).timestamp() * 1000)


def meter_trips(meter: str, bias_pct: float, sd_pct: float, n: int = 100) -> list[Trip]:
    """n trips of 10 km by GNSS whose log-ratios have median ln(1 + bias) and spread sd_pct."""
    tariff = default_tariff_book()["SH-2022"]
    unit = NormalDist()
    z = np.array([unit.inv_cdf((i + 0.5) / n) for i in range(n)])
    logs = np.random.default_rng(len(meter)).permutation(
        math.log1p(bias_pct / 100) + z * sd_pct / 100
    )
    out = []
    for i, r in enumerate(logs.tolist()):
        end = T0 + i * 30 * 60_000
        km = 10.0 * math.exp(r)
        fare = charged_fare_cny(tariff, km, 0.0, ms_to_datetime(end))
        out.append(Trip(f"{meter}-{i}", end - 1_200_000, end, km, fare, "SH-2022", 10.0))
    return out


def test_only_meters_inside_the_band_are_extended(
    tmp_path: Path,
) -> None:
    # T1 sits at +0.7 % with a wide interval (≈ [+0.2, +1.2] %); T2-T6 at the fleet median.
    # All are due within the extension horizon.
    trips = {"T1": meter_trips("T1", 0.7, 2.0)}
    trips |= {f"T{i}": meter_trips(f"T{i}", 0.0, 1.0) for i in range(2, 7)}
    trips["T7"] = meter_trips("T7", 0.0, 1.0)[:5]  # too few trips to say anything
    as_of = T0 + 100 * 30 * 60_000
    verified = date(2025, 4, 1)  # due 2026-04-01, a month after as_of
    registry = {
        m: MeterRow(meter_id=m, kind="taxi", verified_on=verified, period_years=1) for m in trips
    }
    rules = load_rules(REPO / "config" / "rules.yaml").rules.taxi
    state = SqliteState(tmp_path / "s.sqlite")
    try:
        decided = evaluate_taxi.decide_taxis(
            sorted(trips),
            registry,
            evaluate_taxi.TaxiData(trips, {}, {}, {}),
            default_tariff_book(),
            rules,
            state,
            as_of,
            Stamp("now", "rules"),
        )
    finally:
        state.close()
    one = decided["T1"]
    assert (one.decision, one.state, one.new_due_on) == ("keep", "normal", None)
    assert [r.rule for r in one.reasons] == ["taxi.distance.unproven"]
    assert one.evidence["distance_zone"] == "unproven"
    low, high = one.evidence["error_ci_pct"]
    assert low < rules.distance.guard_high_pct < one.evidence["error_pct"] < high
    for meter in ("T2", "T3", "T4", "T5", "T6"):
        d = decided[meter]
        assert (d.decision, d.state, d.new_due_on) == ("extend", "normal", date(2027, 4, 1))
        assert d.evidence["distance_zone"] == "inside"
    # Not enough data is an honest `unknown`: the due date stands, nothing is extended.
    few = decided["T7"]
    assert (few.decision, few.state, few.new_due_on) == ("keep", "unknown", None)


def test_the_taxi_window_reads_alike_from_influxdb(influxdb: InfluxStack, tmp_path: Path) -> None:
    """Heartbeats are read as columns (`columns`), meter by meter, and cut to those that
    tell: both stores answer alike, and as `history` read point by point."""
    fleet = Fleet(FleetSpec(start_ms=START, districts=0, taxis=8, seed=3))
    end = START + 2 * 86_400_000
    records = [
        r
        for m in fleet.messages(START, end)
        if isinstance(r := parse_message(m.topic, m.payload), Record)
    ]
    embedded = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    embedded.write(records)
    settings = InfluxSettings(
        url=influxdb.url,
        token=influxdb.token,
        org=influxdb.org,
        bucket=influxdb.bucket,
        retry_max_s=0.5,
    )
    influx = InfluxStore(settings, tmp_path / "spool", Metrics())
    influx.write(records)
    assert influx.flush(60)
    state = SqliteState(tmp_path / "s.sqlite")
    state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
    try:
        start = START + 3_600_000  # a window that begins inside the first day
        read = [evaluate_taxi.load(s, state, start, end - 1) for s in (embedded, influx)]
        few = ["T001", "T003"]
        one_by_one = [evaluate_taxi.load(s, state, start, end - 1, few) for s in (embedded, influx)]
        # point by point, as `load` read before columns
        by_points = {}
        for meter in sorted(read[0].status):
            points = embedded.history(TAXI_STATUS, meter, HEARTBEAT_FIELDS, start, end, 10**9)
            by_points[meter] = [
                MeterPoint(meter, p.ts_ms, {k: v for k, v in p.values.items() if v is not None})
                for p in telling_heartbeats(points)
            ]
    finally:
        state.close()
        influx.close()
        embedded.close()
    ours, theirs = read
    assert ours.trips == theirs.trips and sum(map(len, ours.trips.values())) > 100
    assert ours.status == theirs.status and ours.events == theirs.events
    assert ours.status == by_points
    assert one_by_one[0].status == one_by_one[1].status == {m: ours.status[m] for m in few}
    broken = [p for ps in ours.status.values() for p in ps if p.values.get("seal") == "broken"]
    assert broken and len(ours.status) == 8
