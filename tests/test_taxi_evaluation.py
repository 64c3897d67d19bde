"""Taxi evaluation end to end on a simulated fleet with planted faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.evaluate import EvaluationResult, Evaluator
from monitor.ingest import summarise_seen
from monitor.metrics import Metrics
from monitor.registry import parse_rows
from monitor.rules.schema import load_rules
from monitor.schema import Record
from monitor.simulate import Fleet, FleetSpec
from monitor.state import SqliteState
from monitor.store.embedded import EmbeddedStore
from monitor.taxi.tariff import load_tariffs
from monitor.telemetry import parse_message

REPO = Path(__file__).resolve().parent.parent
START = 1772294400000
DAYS = 12


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, EvaluationResult]]:
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
    state.note_seen(summarise_seen(records, 0.0))
    tariffs = load_tariffs(REPO / "config" / "tariffs.yaml")
    result = Evaluator(store, state, tariffs=lambda: tariffs).run(
        end - 1, load_rules(REPO / "config" / "rules.yaml")
    )
    yield fleet, result
    store.close()
    state.close()


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
