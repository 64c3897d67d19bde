"""The provisioned Grafana dashboards' queries against a real InfluxDB.

Grafana is not installed here, so its part is done by hand: each panel's InfluxQL is
taken from deploy/grafana/dashboards/*.json, Grafana's macros (`$timeFilter`,
`$__interval`) and the dashboard's variables are filled in as Grafana would, and the
query runs on InfluxDB 1.6 holding what the service wrote (a simulated fleet's
telemetry through the InfluxDB store, and two evaluation passes' result points). The
answers are held against the service's own numbers. The Prometheus dashboard's
expressions are checked against the metrics the service exposes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.core.registry import parse_rows
from monitor.core.rulebook import load_rules
from monitor.core.schema import Record
from monitor.evaluation.export import exporter
from monitor.evaluation.runner import EvaluationResult, Evaluator
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import InfluxSettings
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.influx import InfluxStore
from monitor.store.state import SqliteState
from monitor.taxi.tariff import load_tariffs
from tests.helpers import received_live
from tests.services import InfluxStack

pytestmark = pytest.mark.influxdb

REPO = Path(__file__).resolve().parent.parent
BOARDS = REPO / "deploy" / "grafana" / "dashboards"
START = 1772294400000
DAY = 86_400_000
DAYS = 5


def board(name: str) -> dict[str, Any]:
    return dict(json.loads((BOARDS / name).read_text("utf-8")))


def influx_targets() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in sorted(BOARDS.glob("*.json")):
        body = json.loads(path.read_text("utf-8"))
        for panel in body["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "influxdb":
                    yield path.name, panel["title"], target


@dataclass
class Loaded:
    """InfluxDB after the service wrote a fleet's telemetry and two passes into it."""

    stack: InfluxStack
    fleet: Fleet
    state: SqliteState
    passes: list[EvaluationResult]
    records: list[Record]

    def run(self, query: str, variables: dict[str, str]) -> list[dict[str, Any]]:
        """A dashboard query as Grafana sends it, over the whole loaded period (from the
        day before it: the evaluation's days begin at UTC midnight, before START)."""
        return self.stack.rows(render(query, variables, START - DAY, START + DAYS * DAY))


# A variable's "All" value is written into the query as it is; others regex-escaped,
# as Grafana's InfluxDB datasource does for a value inside /…/.
ALL = ".*"


def render(query: str, variables: dict[str, str], start_ms: int, end_ms: int) -> str:
    """Grafana's part: its macros, then the dashboard variables (longest names first)."""
    text = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    text = text.replace("$__interval", "1h")
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        text = text.replace(f"${name}", value if value == ALL else re.escape(value))
    assert not re.search(r"\$[A-Za-z_]", text), f"unfilled variable in {text}"
    return text


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    from tests.conftest import _require
    from tests.services import InfluxDB1, InfluxV2Adapter, find_influxd

    _require(find_influxd, "influxd", "influxdb")
    tmp = tmp_path_factory.mktemp("dashboards")
    server = InfluxDB1(tmp / "influxdb")
    server.start()
    adapter = InfluxV2Adapter(server.url)
    adapter.start()
    server.create_database("meters")
    stack = InfluxStack(server, adapter)
    fleet = Fleet(
        FleetSpec(
            start_ms=START,
            districts=1,
            meters_per_district=(24, 24),
            taxis=6,
            seed=3,
            stopped_meters=0,
        )
    )
    settings = InfluxSettings(
        url=stack.url, token=stack.token, org=stack.org, bucket=stack.bucket, retry_max_s=0.5
    )
    store = InfluxStore(settings, tmp / "spool", Metrics())
    state = SqliteState(tmp / "state.sqlite")
    state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
    records = [
        r
        for m in fleet.messages(START, START + DAYS * DAY)
        if isinstance(r := parse_message(m.topic, m.payload), Record)
    ]
    store.write(records)
    state.note_seen(summarise_seen(records, received_live(records)))
    assert store.flush(60)
    tariffs = load_tariffs(REPO / "config" / "tariffs.yaml")
    book = load_rules(REPO / "config" / "rules.yaml")
    evaluator = Evaluator(store, state, tariffs=lambda: tariffs, export=exporter(store))
    passes = [evaluator.run(START + d * DAY, book) for d in (DAYS - 1, DAYS)]
    assert store.flush(60)
    try:
        yield Loaded(stack, fleet, state, passes, records)
    finally:
        store.close()
        state.close()
        stack.stop()


def _district(loaded: Loaded) -> str:
    return next(iter(loaded.passes[-1].districts))


def _variables(loaded: Loaded) -> dict[str, str]:
    last = loaded.passes[-1]
    elec = sorted(m for m, d in last.meters.items() if d.kind == "elec")
    taxi = sorted(m for m, d in last.meters.items() if d.kind == "taxi")
    return {"region": ALL, "district": _district(loaded), "meter": elec[0], "taxi": taxi[0]}


@pytest.mark.parametrize(
    ("name", "title", "target"),
    [pytest.param(*t, id=f"{t[0]}:{t[1]}:{t[2]['refId']}") for t in influx_targets()],
)
def test_every_influxql_panel_runs_and_returns_series(
    loaded: Loaded, name: str, title: str, target: dict[str, Any]
) -> None:
    variables = _variables(loaded)
    if title == "Events":  # the meter with events, not the first one
        variables["meter"] = next(
            r.meter for r in loaded.records if r.measurement.name == "elec_event"
        )
    rows = loaded.run(target["query"], variables)
    assert rows, f"{name} / {title}: no series"
    assert any(v is not None for r in rows for k, v in r.items() if k != "time")


def _target(name: str, title: str, ref: str = "A") -> str:
    panel = next(p for p in board(name)["panels"] if p["title"] == title)
    return str(next(t for t in panel["targets"] if t["refId"] == ref)["query"])


def test_variable_queries_list_the_fleet(loaded: Loaded) -> None:
    variables = {
        v["name"]: v["query"]
        for b in BOARDS.glob("*.json")
        for v in board(b.name)["templating"]["list"]
    }
    last = loaded.passes[-1]
    district = _district(loaded)
    assert [r["value"] for r in loaded.run(variables["district"], {})] == [district]
    meters = {r["value"] for r in loaded.run(variables["meter"], {"district": district})}
    assert meters == {
        m
        for m, d in last.meters.items()
        if d.kind == "elec" and m in last.districts[district].members
    }
    taxis = {r["value"] for r in loaded.run(variables["taxi"], {})}
    assert taxis == {m for m, d in last.meters.items() if d.kind == "taxi"}


def test_fleet_counts_are_the_passes_counts(loaded: Loaded) -> None:
    for title, kind in (("Electricity meters by state", "elec"), ("Taxi meters by state", "taxi")):
        rows = loaded.run(_target("fleet.json", title), {"region": ALL})
        assert len(rows) == len(loaded.passes)
        for row, result in zip(rows, loaded.passes, strict=True):
            states = {s: 0 for s in ("normal", "watch", "suspect", "faulty", "unknown")}
            for d in result.meters.values():
                if d.kind == kind:
                    states[d.state] += 1
            assert {s: row[s] for s in states} == states, title
    lots = loaded.run(_target("fleet.json", "Lot decisions"), {"region": ALL})
    summary = loaded.passes[-1].summary()["lot_decisions"]
    assert {a: lots[-1][a] for a in summary} == summary
    readings = loaded.run(_target("fleet.json", "Readings stored"), {})
    stored = {(r.meter, r.ts_ms) for r in loaded.records if r.measurement.name == "elec_reading"}
    assert sum(r["count"] for r in readings) == len(stored)


def test_district_line_loss_and_errors_are_the_district_report(loaded: Loaded) -> None:
    district = _district(loaded)
    variables = {"district": district}
    report = loaded.state.district(district)
    assert report is not None
    per_pass = loaded.run(_target("district.json", "Line loss per pass"), variables)
    assert per_pass[-1]["last"] == pytest.approx(report["gates"]["line_loss_pct"], abs=1e-3)
    daily = loaded.run(_target("district.json", "Daily line loss"), variables)
    expected = [d for d in report["line_loss_daily"] if d["line_loss_pct"] is not None]
    assert [round(r["line_loss_pct"], 3) for r in daily][-len(expected) :] == [
        round(d["line_loss_pct"], 3) for d in expected
    ]
    table = loaded.run(_target("district.json", "Estimated error per meter"), variables)
    by_meter = {r["meter"]: r for r in table}
    assert set(by_meter) == {m["meter"] for m in report["meters"]}
    evaluable = [m for m in report["meters"] if m["evaluable"]]
    assert evaluable
    for m in evaluable:
        row = by_meter[m["meter"]]
        assert row["error %"] == pytest.approx(m["error_pct"], abs=1e-3)
        assert [row["low %"], row["high %"]] == pytest.approx(m["error_ci_pct"], abs=1e-3)
        assert row["state"] == m["state"]


def test_meter_registers_and_estimate(loaded: Loaded) -> None:
    variables = _variables(loaded)
    meter = variables["meter"]
    mine = sorted(
        (r for r in loaded.records if r.meter == meter and r.measurement.name == "elec_reading"),
        key=lambda r: r.ts_ms,
    )
    registers = loaded.run(_target("meter.json", "Registers"), variables)
    assert registers[-1]["forward"] == pytest.approx(mine[-1].values["energy_kwh"])
    decision = loaded.passes[-1].meters[meter]
    estimate = loaded.run(_target("meter.json", "Estimated error"), variables)
    assert estimate[-1]["error"] == decision.evidence["error_pct"]


def test_taxi_ratio_and_fares_are_the_trips(loaded: Loaded) -> None:
    variables = _variables(loaded)
    taxi = variables["taxi"]
    trips = {
        r.values["trip_id"]: r.values
        for r in loaded.records
        if r.meter == taxi and r.measurement.name == "taxi_trip"
    }
    long = [t for t in trips.values() if float(t.get("gps_km", 0.0)) >= 3]
    ratios = loaded.run(_target("taxi.json", "Distance ratio per trip"), variables)
    assert len(ratios) == len(long)
    assert sorted(r["meter/GNSS"] for r in ratios) == pytest.approx(
        sorted(float(t["meter_km"]) / float(t["gps_km"]) for t in long)
    )
    fares = loaded.run(_target("taxi.json", "Fares per day"), variables)
    assert sum(r["fares"] for r in fares) == pytest.approx(
        sum(float(t["fare_cny"]) for t in trips.values())
    )
    delta = loaded.run(_target("taxi.json", "Distance error δ"), variables)
    assert delta[-1]["δ"] == loaded.passes[-1].meters[taxi].evidence["error_pct"]


# --- the Prometheus dashboard ----------------------------------------------------------

_METRIC = re.compile(r"\b(monitor_[a-z_]+)\b")
_BY = re.compile(r"\bby \(([^)]*)\)")
_MATCHER = re.compile(r"\{([^}]*)\}")


def _exposed() -> dict[str, set[str]]:
    """Every sample name the service exposes, with its label names."""
    metrics = Metrics()
    metrics.received.labels(kind="elec").inc()
    metrics.rejected.labels(reason="bad_json").inc()
    metrics.written.labels(measurement="elec_reading").inc()
    metrics.store_errors.labels(backend="influxdb").inc()
    metrics.ingest_lag.observe(0.1)
    from prometheus_client import generate_latest

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_prometheus_expressions_name_metrics_and_labels_the_service_exposes() -> None:
    exposed = _exposed()
    targets = [t for p in board("ingest.json")["panels"] for t in p["targets"]]
    assert targets and all(t["datasource"]["type"] == "prometheus" for t in targets)
    for t in targets:
        expr = t["expr"]
        names = _METRIC.findall(expr)
        assert names, expr
        for name in names:
            assert name in exposed, f"{name} is not exposed (counters end in _total): {expr}"
        labels = {lab.strip() for group in _BY.findall(expr) for lab in group.split(",")}
        labels |= {
            m.split("=")[0].rstrip("!~").strip()
            for group in _MATCHER.findall(expr)
            for m in group.split(",")
        }
        known = set().union(*(exposed[n] for n in names))
        assert labels <= known, (expr, labels - known)
