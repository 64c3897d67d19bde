"""`monitor telemetry import`: a backfill from JSON Lines, validated as ingest validates,
stored through the real stores (embedded, InfluxDB), then kept as day summaries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from monitor.core.clock import DAY_MS
from monitor.core.registry import parse_rows
from monitor.core.rulebook import load_rules
from monitor.core.schema import ELEC_READING
from monitor.electricity.days import load_district_days
from monitor.electricity.evaluate import READING_FIELDS
from monitor.evaluation.runner import SUMMARY_MARGIN_DAYS, Evaluator
from monitor.ingest.importer import ImportRules, ImportStalled, Pace, import_lines
from monitor.ingest.limits import IngestSettings, Limits
from monitor.platform.config import InfluxSettings, Settings, load_settings
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store import open_store
from monitor.store.audit import SqliteAudit
from monitor.store.influx import InfluxStore
from monitor.store.state import SqliteState
from tests.helpers import reading
from tests.services import InfluxStack

REPO = Path(__file__).resolve().parent.parent
START = 1772294400000  # 2026-03-01T00:00:00+08:00
DAYS = 5


@pytest.fixture(params=["embedded", "influxdb"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    config = tmp_path / "config"
    config.mkdir()
    for name in ("monitor.yaml", "rules.yaml", "tariffs.yaml"):
        (config / name).write_bytes((REPO / "config" / name).read_bytes())
    out = {"MONITOR_CONFIG": str(config), "MONITOR_DATA_DIR": str(tmp_path / "data")}
    if request.param == "influxdb":
        stack: InfluxStack = request.getfixturevalue("influxdb")
        out |= {
            "MONITOR_STORE": "influxdb",
            "MONITOR_INFLUX_URL": stack.url,
            "MONITOR_INFLUX_TOKEN": stack.token,
            "MONITOR_INFLUX_ORG": stack.org,
            "MONITOR_INFLUX_BUCKET": stack.bucket,
        }
    yield out


def history(fleet: Fleet) -> list[str]:
    """The fleet's messages as an export would hold them, one JSON line each."""
    return [
        json.dumps({"topic": m.topic, "payload": m.payload.decode("utf-8")})
        for m in fleet.messages(START, START + DAYS * DAY_MS)
    ]


BAD = [
    "not json at all",
    json.dumps({"payload": {"ts": START, "energy_kwh": 1.0}}),  # no topic
    json.dumps({"topic": "meters/elec/D01/X1/reading", "payload": 12}),
    json.dumps({"topic": "meters/elec/D01/X2/reading", "payload": {"ts": START, "energy_kwh": -5}}),
    json.dumps({"topic": "meters/elec/D01/X3/reading", "payload": {"ts": START, "energy_kwh": 1, "voltage_v": 5000}}),
    json.dumps({"topic": "meters/elec/D01/X4/reading", "payload": {"ts": 4_070_908_800_000, "energy_kwh": 1}}),
    json.dumps({"topic": "meters/nowhere", "payload": {}}),
]  # fmt: skip
BAD_REASONS = {
    "invalid_line": 3,
    "invalid_payload": 1,
    "out_of_range": 1,
    "future_timestamp": 1,
    "unknown_topic": 1,
}


def test_an_import_stores_what_ingest_would_refuses_the_rest_with_reasons_and_summarises(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(
        FleetSpec(start_ms=START, districts=2, meters_per_district=(6, 8), taxis=2, seed=3)
    )
    settings = load_settings(Path(env["MONITOR_CONFIG"]), env)
    state = SqliteState(settings.storage.data_dir / "state.sqlite")
    state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
    state.close()
    lines = history(fleet)
    # A registered meter under another district's topic: refused as ingest refuses it.
    moved = json.loads(next(line for line in lines if "/elec/" in line and "/reading" in line))
    parts = moved["topic"].split("/")
    moved["topic"] = "/".join([*parts[:2], "ELSEWHERE", *parts[3:]])
    file = tmp_path / "history.jsonl"
    file.write_text("\n".join([*lines[:100], *BAD, json.dumps(moved), *lines[100:]]) + "\n")

    rejects = tmp_path / "rejects.jsonl"
    assert main(["telemetry", "import", str(file), "--rejects", str(rejects)], env) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rejected"] == BAD_REASONS | {"district_mismatch": 1}
    assert report["lines"] == len(lines) + len(BAD) + 1
    assert report["stored"] == len(lines) - report["ignored"]
    refused = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["line"] for r in refused] == list(range(101, 101 + len(BAD) + 1))
    assert all(r["detail"] and r["text"] for r in refused)
    # The same lines again with --strict: refused lines make the exit status 1.
    assert main(["telemetry", "import", str(file), "--strict"], env) == 1
    capsys.readouterr()

    state = SqliteState(settings.storage.data_dir / "state.sqlite")
    store = open_store(settings.storage, Metrics())
    try:
        _check_summarised(settings, state, store, fleet, report)
    finally:
        store.close()
        state.close()


def _check_summarised(
    settings: Settings, state: SqliteState, store: Any, fleet: Fleet, report: dict[str, Any]
) -> None:
    districts = sorted({r["district"] for r in fleet.registry_rows() if r["kind"] == "elec"})
    assert report["districts"] == len(districts)
    first, last = START // DAY_MS, (START + DAYS * DAY_MS - 1) // DAY_MS
    for d in districts:
        kept = state.day_summaries(d, 0, 10**9)
        assert set(kept) == set(range(first, last + 1)), d
        assert state.marked_days(d, 0, 10**9) == set()  # the import's marks are consumed
    assert report["days_summarised"] == len(districts) * (last - first + 1)
    # A pass over the imported days reads nothing from the store: and gets what it would.
    upto = state.mark_sequence()
    start, end = first * DAY_MS, (last + 1) * DAY_MS - 1
    for d in districts:
        series, read = load_district_days(store, state, d, start, end, upto, READING_FIELDS)
        assert read.read_days == 0 and read.ranges == []
        direct = store.series(ELEC_READING, READING_FIELDS, start, end, district=d)
        assert sorted(series) == sorted(direct)
        for m, s in direct.items():
            assert series[m].ts_ms.tolist() == s.ts_ms.tolist()
    # History is heard of at its own time: no meter looks alive now.
    latest = state.latest_event_ts()
    received = state.last_received()
    assert latest is not None and received is not None and received <= latest / 1000
    # And a pass decides as without summaries.
    book = load_rules(settings.rules_file)
    with_days = Evaluator(store, state, summaries=state).run(latest, book, record=False)
    without = Evaluator(store, state).run(latest, book, record=False)
    assert {m: d.as_dict() for m, d in with_days.meters.items()} == {
        m: d.as_dict() for m, d in without.meters.items()
    }
    audit = SqliteAudit(settings.storage.data_dir / "state.sqlite", "test")
    try:
        actions = [json.loads(r.body)["action"] for r in audit.rows(0, 1000)]
    finally:
        audit.close()
    assert actions.count("telemetry.import") == 2


def test_an_import_of_a_missing_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MONITOR_CONFIG": str(REPO / "config"), "MONITOR_DATA_DIR": str(tmp_path)}
    assert main(["telemetry", "import", str(tmp_path / "nope.jsonl")], env) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_import_keeps_what_passes_and_backtests_read_and_a_pass_keeps_it_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    rules = (REPO / "config" / "rules.yaml").read_text(encoding="utf-8")
    (config / "rules.yaml").write_text(rules.replace("window_days: 30 ", "window_days: 3 "))
    (config / "tariffs.yaml").write_bytes((REPO / "config" / "tariffs.yaml").read_bytes())
    env = {"MONITOR_CONFIG": str(config), "MONITOR_DATA_DIR": str(tmp_path / "data")}
    days = 16
    fleet = Fleet(
        FleetSpec(start_ms=START, districts=1, meters_per_district=(5, 5), taxis=0, seed=4)
    )
    file = tmp_path / "history.jsonl"
    file.write_text(
        "\n".join(
            json.dumps({"topic": m.topic, "payload": m.payload.decode("utf-8")})
            for m in fleet.messages(START, START + days * DAY_MS)
        )
    )
    assert main(["telemetry", "import", str(file)], env) == 0
    report = json.loads(capsys.readouterr().out)
    first, last = START // DAY_MS, (START + days * DAY_MS - 1) // DAY_MS
    recent = set(range(last - 3 - SUMMARY_MARGIN_DAYS, last + 1))
    assert first < min(recent)  # the history is longer than what is kept
    assert report["days_summarised"] == len(recent)
    settings = load_settings(config, env)
    state = SqliteState(settings.storage.data_dir / "state.sqlite")
    store = open_store(settings.storage, Metrics())
    try:
        assert set(state.day_summaries("D01", 0, 10**9)) == recent
        # A recorded pass a day later keeps its window and the margin before it.
        latest = state.latest_event_ts()
        assert latest is not None
        Evaluator(store, state, summaries=state).run(
            latest + DAY_MS, load_rules(config / "rules.yaml")
        )
        window_start = (latest + DAY_MS - 3 * DAY_MS) // DAY_MS
        assert set(state.day_summaries("D01", 0, 10**9)) == {
            d for d in recent if d >= window_start - SUMMARY_MARGIN_DAYS
        }
    finally:
        store.close()
        state.close()


def test_an_import_waits_for_influxdb_and_says_when_it_takes_nothing(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    settings = InfluxSettings(
        url=influxdb.url, token=influxdb.token, org=influxdb.org, bucket=influxdb.bucket,
        retry_max_s=0.5,
    )  # fmt: skip
    metrics = Metrics()
    store = InfluxStore(settings, tmp_path / "spool", metrics)
    state = SqliteState(tmp_path / "state.sqlite")
    rules = ImportRules("meters", 65536, Limits.of(IngestSettings()), 10**13, {})
    lines = [json.dumps({"topic": t, "payload": p}) for t, p in (reading(i) for i in range(60))]
    pace = Pace(max_buffered=10, stall_s=2.0)
    try:
        # Up: the import goes at InfluxDB's pace, never more than a batch ahead of it.
        assert import_lines(lines[:30], store, state, rules, batch=10, pace=pace).stored == 30
        influxdb.server.stop()
        with pytest.raises(ImportStalled, match="took nothing for 2 s"):
            import_lines(lines[30:], store, state, rules, batch=10, pace=pace)
        assert store.health().dropped_points == 0  # waiting, not dropping
        influxdb.server.start()
        assert store.flush(30)
        rows = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading WHERE meter = 'M1'")
        assert rows[0]["count"] >= 40  # what was read before it gave up is stored
    finally:
        store.close()
        state.close()
