"""A pass split between workers (PostgreSQL state) against one worker's pass (SQLite).

The same simulated fleet and the same telemetry store; the reference is the single
process evaluator on the embedded state. Workers are threads here, each with its own
connections, evaluator and lease owner (test_cluster.py runs them as processes).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from monitor.alerts.book import AlertBook, Change
from monitor.core.clock import DAY_MS
from monitor.core.ports import TelemetryStore
from monitor.core.registry import parse_rows
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import ELEC_READING, Record
from monitor.evaluation.cluster import ClusterPasses, ClusterSettings
from monitor.evaluation.export import exporter, pass_lines
from monitor.evaluation.runner import EvaluationResult, Evaluator, ResultExport
from monitor.evaluation.shadow import RulesDesk, compare
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.embedded import EmbeddedStore
from monitor.store.postgres.alerts import PostgresAlerts
from monitor.store.postgres.db import Database
from monitor.store.postgres.passes import PostgresPasses
from monitor.store.postgres.rules import PostgresShelf
from monitor.store.postgres.state import PostgresState
from monitor.store.state import SqliteState
from tests.helpers import received_live

REPO = Path(__file__).resolve().parent.parent
START = 1772294400000
DAYS = 10
CLEAR_MS = 2 * 86_400_000


@dataclass
class Telemetry:
    store: EmbeddedStore
    registry: list[dict[str, Any]]
    records: list[Record]
    as_of: int
    book: RuleBook


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Telemetry]:
    tmp = tmp_path_factory.mktemp("cluster-pass")
    fleet = Fleet(
        FleetSpec(start_ms=START, districts=5, meters_per_district=(12, 16), taxis=6, seed=11)
    )
    store = EmbeddedStore(tmp / "telemetry.sqlite", Metrics())
    records = [
        r
        for m in fleet.messages(START, START + DAYS * 86_400_000)
        if isinstance(r := parse_message(m.topic, m.payload), Record)
    ]
    store.write(records)
    # Lot lines wide enough that some lots extend: the finish then rewrites members.
    rules = yaml.safe_load((REPO / "config" / "rules.yaml").read_text(encoding="utf-8"))
    rules["elec"]["lot"] |= {
        "horizon_months": 60,
        "max_faulty_share": 0.3,
        "reject_faulty_share": 0.9,
        "max_suspect_share": 0.3,
        "min_evaluable_share": 0.0,
        "error_quantile_max_fraction": 1.0,
    }
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    book = load_rules(tmp / "rules.yaml")
    yield Telemetry(
        store, placed(fleet.registry_rows()), records, max(r.ts_ms for r in records), book
    )
    store.close()


def placed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The households of the first two districts placed on two cables (the registry's
    optional topology): a loss model more for the estimator, so a pass that forgot the
    registry's places would decide differently."""
    districts = sorted({r["district"] for r in rows if r["kind"] == "elec"})[:2]
    out = []
    for i, row in enumerate(rows):
        if row["district"] in districts and row["role"] != "master":
            row = row | {
                "feeder_branch": f"L{i % 2 + 1}",
                "feeder_distance_m": str(30 + 15 * (i % 7)),
            }
        out.append(row)
    return out


@dataclass
class Reference:
    """One worker's pass on the embedded state."""

    path: Path
    result: EvaluationResult
    changes: list[Change]


@pytest.fixture(scope="module")
def reference(telemetry: Telemetry, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    path = tmp_path_factory.mktemp("reference") / "state.sqlite"
    state = SqliteState(path)
    state.upsert_meters(parse_rows(telemetry.registry).rows)
    state.note_seen(summarise_seen(telemetry.records, received_live(telemetry.records)))
    changes: list[Change] = []
    alerts = AlertBook(path, CLEAR_MS)
    ev = Evaluator(telemetry.store, state, alerts=alerts, notify=changes.extend)
    result = ev.run(telemetry.as_of, telemetry.book)
    alerts.close()
    state.close()
    return Reference(path, result, changes)


@dataclass
class Cluster:
    """Workers on one PostgreSQL state."""

    url: str
    telemetry: Telemetry
    databases: list[Database] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(
        self,
        name: str,
        lease_s: float = 30.0,
        size: int = 2,
        shadow: RulesDesk | None = None,
        export: ResultExport | None = None,
        store: TelemetryStore | None = None,
        summaries: bool = False,
    ) -> Evaluator:
        db = Database(self.url)
        self.databases.append(db)
        state = PostgresState(db, name)

        def notify(changes: Sequence[Change]) -> None:
            with self.lock:
                self.changes.extend(changes)

        ev = Evaluator(
            store or self.telemetry.store, state, alerts=AlertBook(PostgresAlerts(db), CLEAR_MS),
            notify=notify, shadow=shadow, export=export, summaries=state if summaries else None,
        )  # fmt: skip
        settings = ClusterSettings(owner=name, lease_s=lease_s, partition_size=size, poll_s=0.05)
        ev.use_cluster(ClusterPasses(ev, PostgresPasses(db), settings, lambda: atomic(db)))
        return ev

    def load(self) -> None:
        state = self.worker("loader").state
        state.upsert_meters(parse_rows(self.telemetry.registry).rows)
        records = self.telemetry.records
        state.note_seen(summarise_seen(records, received_live(records)))
        state.flush_seen()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def cluster(postgres_url: str, telemetry: Telemetry) -> Iterator[Cluster]:
    c = Cluster(postgres_url, telemetry)
    c.load()
    yield c
    for db in c.databases:
        db.close()


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


DECISIONS = "SELECT scope, subject, body FROM decisions ORDER BY scope, subject"
DISTRICTS = "SELECT district, as_of, body FROM districts ORDER BY district"
OCCURRENCES = "SELECT alert_id, occurrence, at_ms FROM alert_occurrences ORDER BY 1, 2"
ALERTS = "SELECT id, key, severity, message, count, status, first_seen, last_seen, evidence FROM alerts ORDER BY id"


@contextmanager
def atomic(db: Database) -> Iterator[None]:
    """One transaction that the stores' writes inside join."""
    with db.transaction():
        yield


def in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    out: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def assert_same_as_reference(cluster: Cluster, reference: Reference) -> None:
    assert cluster.rows(DECISIONS) == sqlite_rows(reference.path, DECISIONS)
    assert cluster.rows(DISTRICTS) == sqlite_rows(reference.path, DISTRICTS)
    assert cluster.rows(ALERTS) == [tuple(r) for r in sqlite_rows(reference.path, ALERTS)]
    assert cluster.rows(OCCURRENCES) == sqlite_rows(reference.path, OCCURRENCES)
    # Every change handed to the notifier once, as one worker hands them over.
    assert [(c.action, c.alert["id"]) for c in cluster.changes] == [
        (c.action, c.alert["id"]) for c in reference.changes
    ]


def test_the_reference_pass_exercises_what_the_partitions_split(reference: Reference) -> None:
    # Several districts, lots (one extended, so the finish rewrites its members), taxis,
    # alerts: otherwise the comparisons below would prove less than they say.
    r = reference.result
    assert len(r.districts) == 5 and r.lots and reference.changes
    assert any(d.decision == "extend" for d in r.lots.values())
    assert any(d.kind == "taxi" for d in r.meters.values())
    # alerts counting events (not passes): the finish must count them as one worker does
    assert sqlite_rows(reference.path, "SELECT count(*) FROM alert_occurrences")[0][0] > 0


@pytest.mark.parametrize("workers", [1, 3])
def test_a_pass_split_between_workers_decides_byte_for_byte_as_one_worker(
    cluster: Cluster, reference: Reference, telemetry: Telemetry, workers: int
) -> None:
    evs = [cluster.worker(f"w{i}") for i in range(workers)]
    results = in_threads([partial(ev.run, telemetry.as_of, telemetry.book) for ev in evs])
    for result in results:
        assert result.summary() == reference.result.summary()
        assert {m: d.as_dict() for m, d in result.meters.items()} == {
            m: d.as_dict() for m, d in reference.result.meters.items()
        }
    assert_same_as_reference(cluster, reference)
    done_by = {r[0] for r in cluster.rows("SELECT done_by FROM pass_partitions")}
    assert len(cluster.rows("SELECT id FROM passes")) == 1
    if workers > 1:
        assert len(done_by) > 1, "the partitions were not shared"


def test_the_schedule_firing_on_every_worker_runs_one_pass(
    cluster: Cluster, reference: Reference, telemetry: Telemetry
) -> None:
    evs = [cluster.worker(f"w{i}") for i in range(3)]
    summaries = in_threads(
        [partial(ev.run_scheduled, "2026-03-11T02:15", telemetry.book) for ev in evs]
    )
    assert all(s == reference.result.summary() for s in summaries)
    assert len(cluster.rows("SELECT id FROM passes")) == 1
    # observed once: the alerts and their counts are one worker's after one pass
    assert cluster.rows(ALERTS) == [tuple(r) for r in sqlite_rows(reference.path, ALERTS)]
    # a late worker's schedule for the same slot finds it done
    assert evs[0].run_scheduled("2026-03-11T02:15", telemetry.book) == summaries[0]
    assert len(cluster.rows("SELECT id FROM passes")) == 1


def test_partitions_of_a_worker_that_died_are_taken_over(
    cluster: Cluster, reference: Reference, telemetry: Telemetry
) -> None:
    dead = cluster.worker("dead", lease_s=1.0)
    board = PostgresPasses(cluster.databases[-1])
    ticket = board.open_pass(
        None,
        lambda: telemetry.as_of,
        telemetry.book.version,
        lambda at: ClusterPasses(
            dead, board, ClusterSettings("dead", partition_size=2), lambda: board_tx(cluster)
        ).plan(at, telemetry.book),
        "dead",
    )
    assert ticket is not None
    held = [board.claim(ticket.id, "dead", 1.0) for _ in range(2)]  # then killed -9
    assert all(held)
    alive = cluster.worker("alive")
    result = alive.run(telemetry.as_of, telemetry.book)
    assert result.summary() == reference.result.summary()
    assert_same_as_reference(cluster, reference)
    taken = cluster.rows("SELECT attempts, done_by FROM pass_partitions WHERE attempts > 1")
    assert len(taken) == 2 and {r[1] for r in taken} == {"alive"}


def board_tx(cluster: Cluster) -> Any:
    return cluster.databases[-1].transaction()


def test_a_candidate_is_dry_run_once_beside_a_cluster_pass(
    cluster: Cluster,
    reference: Reference,
    telemetry: Telemetry,
    tmp_path: Path,
) -> None:
    text = (Path(telemetry.book.source)).read_text(encoding="utf-8")
    strict = text.replace("max_faulty_share: 0.3", "max_faulty_share: 0.01")
    assert strict != text
    db = Database(cluster.url)
    cluster.databases.append(db)
    shelves: list[PostgresShelf] = []

    def desk() -> RulesDesk:
        shelves.append(PostgresShelf(db))
        rules = Path(telemetry.book.source)
        return RulesDesk(rules, tmp_path, in_force=lambda: telemetry.book, shelf=shelves[-1])

    candidate = desk().upload(strict)  # through one worker
    evs = [cluster.worker(f"w{i}", shadow=desk()) for i in range(2)]
    in_threads([partial(ev.run, telemetry.as_of, telemetry.book) for ev in evs])
    report = desk().report()
    assert report is not None and report.candidate_version == candidate.version
    # what one worker's pass and the candidate's dry run differ in, subject by subject
    alone = evs[0].run(telemetry.as_of, candidate, record=False)
    expected = compare(reference.result, alone)
    assert report.counts == expected.counts and report.counts, "the candidate changes nothing"
    assert report.differences == expected.differences


@dataclass
class LineRecorder:
    """Where the result points go (the InfluxDB store's `write_lines`), kept for a look."""

    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write_lines(self, lines: Sequence[str], measurement: str) -> None:
        with self.lock:
            self.lines.extend(lines)


def test_a_cluster_pass_exports_the_points_one_worker_would(
    cluster: Cluster, reference: Reference, telemetry: Telemetry
) -> None:
    sink = LineRecorder()
    export = exporter(sink)
    evs = [cluster.worker(f"w{i}", export=export) for i in range(3)]
    in_threads([partial(ev.run, telemetry.as_of, telemetry.book) for ev in evs])
    expected = pass_lines(reference.result)
    measurements = {line.split(",", 1)[0] for line in expected}
    assert {"meter_state", "lot_state", "district_balance", "fleet_summary"} <= measurements
    # each point once, whichever worker computed it (districts by their partition's
    # worker, decisions and the fleet summary by the one that finished the pass)
    assert sorted(sink.lines) == sorted(expected)


def test_a_cluster_pass_from_day_summaries_decides_as_a_full_read_after_late_readings(
    cluster: Cluster, reference: Reference, telemetry: Telemetry, tmp_path: Path
) -> None:
    # The history written through a store that marks the shared state, as ingest does.
    marks = PostgresState(Database(cluster.url), "ingest")
    store = EmbeddedStore(tmp_path / "telemetry.sqlite", Metrics(), marks=marks)
    store.write(telemetry.records)
    evs = [cluster.worker(f"w{i}", store=store, summaries=True) for i in range(2)]
    first = in_threads([partial(ev.run, telemetry.as_of, telemetry.book) for ev in evs])
    for result in first:
        assert {m: d.as_dict() for m, d in result.meters.items()} == {
            m: d.as_dict() for m, d in reference.result.meters.items()
        }
    taxi = "substr(district, 1, 5) = 'taxi/'"  # taxi keys (`taxi.days`) beside districts
    kept = cluster.rows(
        f"SELECT count(*), count(DISTINCT district) FROM day_summaries WHERE NOT {taxi}"
    )[0]
    assert kept[0] > 0 and kept[1] == 5, "every district's complete days kept"
    assert cluster.rows(f"SELECT count(DISTINCT district) FROM day_summaries WHERE {taxi}") == [
        (64,)
    ], "and every taxi bucket's"
    # What stays marked: the partial last day, which no summary holds.
    partial_day = [(telemetry.as_of // DAY_MS,)]
    assert cluster.rows("SELECT DISTINCT day FROM day_marks") == partial_day

    # Late corrections, three days back: one household's register runs 2 kWh higher.
    meter = next(m for m, row in reference.result.meters.items() if row.kind == "elec")
    day = telemetry.as_of // DAY_MS - 3
    late = [
        replace(r, values={**r.values, "energy_kwh": float(r.values["energy_kwh"]) + 2.0})
        for r in telemetry.records
        if r.measurement.name == ELEC_READING.name and r.meter == meter
        and r.ts_ms // DAY_MS == day and "energy_kwh" in r.values
    ]  # fmt: skip
    assert late
    store.write(late)
    assert cluster.rows(f"SELECT count(*) FROM day_marks WHERE day = {day}") == [(1,)]

    again = evs[0].run(telemetry.as_of, telemetry.book)
    fresh = SqliteState(tmp_path / "state.sqlite")
    fresh.upsert_meters(parse_rows(telemetry.registry).rows)
    fresh.note_seen(summarise_seen(telemetry.records, received_live(telemetry.records)))
    full = Evaluator(store, fresh).run(telemetry.as_of, telemetry.book, record=False)
    assert {m: d.as_dict() for m, d in again.meters.items()} == {
        m: d.as_dict() for m, d in full.meters.items()
    }
    assert again.meters[meter].as_dict() != reference.result.meters[meter].as_dict()
    assert cluster.rows("SELECT DISTINCT day FROM day_marks") == partial_day  # re-summarised
    fresh.close()
    store.close()
