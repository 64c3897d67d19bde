"""The InfluxDB backend against a real InfluxDB (1.6 behind the v2 write adapter)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from monitor.core.ports import Columns
from monitor.core.schema import ELEC_EVENT, ELEC_READING, TAXI_STATUS, TAXI_TRIP, Record
from monitor.ingest.worker import IngestWorker
from monitor.platform.config import InfluxSettings
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import parse_broker_url
from monitor.store.influx import (
    InfluxStore,
    columns_from_response,
    series_from_response,
    window_parts,
)
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS, Publisher, reading, wait_for
from tests.services import InfluxStack, Mosquitto


def settings(stack: InfluxStack, **kw: object) -> InfluxSettings:
    return InfluxSettings(
        url=stack.url, token=stack.token, org=stack.org, bucket=stack.bucket, retry_max_s=0.5, **kw
    )


def rec(i: int, meter: str = "M1", kwh: float | None = None) -> Record:
    return Record(
        ELEC_READING,
        meter,
        "TA1",
        BASE_MS + i * 900_000,
        {"energy_kwh": kwh if kwh is not None else 100.0 + i, "seq": i},
    )


def test_points_land_with_schema_and_duplicates_overwrite(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    store.write([rec(0), rec(1), rec(2)])
    store.write([rec(1), rec(0, meter="M2")])  # a duplicate and another meter
    store.write(
        [
            Record(ELEC_EVENT, "M1", "TA1", BASE_MS, {"code": "cover_open", "detail": "lid"}),
            Record(
                TAXI_TRIP,
                "T1",
                "",
                BASE_MS,
                {"trip_id": "x", "meter_km": 4.5, "tariff_version": "SH-2022"},
            ),
        ]
    )
    assert store.flush(20)
    rows = influxdb.rows("SELECT * FROM elec_reading WHERE meter = 'M1'")
    assert [(r["time"], r["energy_kwh"], r["seq"], r["district"]) for r in rows] == [
        (BASE_MS + i * 900_000, 100.0 + i, i, "TA1") for i in range(3)
    ]
    tags = influxdb.rows("SHOW TAG KEYS FROM elec_reading")
    assert {r["tagKey"] for r in tags} == {"meter", "district"}
    fields = {
        r["fieldKey"]: r["fieldType"] for r in influxdb.rows("SHOW FIELD KEYS FROM elec_reading")
    }
    assert fields == {"energy_kwh": "float", "seq": "integer"}
    event = influxdb.rows("SELECT * FROM elec_event")
    assert event[0]["code"] == "cover_open" and event[0]["detail"] == "lid"
    # reads go through /query on the adapter, as they would on InfluxDB 2.x
    hist = store.history(ELEC_READING, "M1", ["energy_kwh"], BASE_MS + 1, None, 100)
    assert [(p.ts_ms, p.values["energy_kwh"]) for p in hist] == [
        (BASE_MS + 900_000, 101.0),
        (BASE_MS + 1_800_000, 102.0),
    ]
    latest = store.latest(TAXI_TRIP, "T1")
    assert latest is not None and latest.values["meter_km"] == 4.5
    assert metrics.registry.get_sample_value("monitor_points_flushed_total") == 7
    store.close()


def test_influxdb_down_spools_then_drains_without_loss(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    store.write([rec(i) for i in range(10)])
    assert store.flush(20)
    influxdb.server.stop()
    for batch in range(20):
        store.write([rec(10 + batch * 50 + j) for j in range(50)])
    wait_for(
        lambda: "unreachable" in store.health().detail or "503" in store.health().detail,
        20,
        "the store to notice InfluxDB is down",
    )
    assert store.health().buffered_points > 0
    assert store.health().writable  # the spool still takes writes
    influxdb.server.start()
    assert store.flush(60), "spool did not drain after InfluxDB came back"
    count = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading")
    assert count[0]["count"] == 1010
    assert store.health().dropped_points == 0
    assert metrics.registry.get_sample_value("monitor_store_buffered_points") == 0
    store.close()


def test_spool_survives_a_restart_of_the_service(influxdb: InfluxStack, tmp_path: Path) -> None:
    influxdb.server.stop()
    first = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    first.write([rec(i) for i in range(100)])
    first.close()  # InfluxDB down: what is left stays on disk
    influxdb.server.start()
    second = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    assert second.flush(30)
    assert influxdb.rows("SELECT count(energy_kwh) FROM elec_reading")[0]["count"] == 100
    second.close()


def test_points_influxdb_refuses_for_good_are_counted_as_dropped(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    # A string field where the schema has a float: every later write of it conflicts.
    httpx.post(
        f"{influxdb.server.url}/write",
        params={"db": influxdb.db},
        content=f'elec_reading,meter=X energy_kwh="text" {BASE_MS}000000',
    ).raise_for_status()
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    store.write([rec(1)])
    wait_for(lambda: store.health().dropped_points == 1, 20, "the refused point to be counted")
    assert metrics.registry.get_sample_value("monitor_store_dropped_points_total") == 1
    store.write(
        [
            Record(
                TAXI_TRIP,
                "T1",
                "",
                BASE_MS,
                {"trip_id": "y", "meter_km": 1.0, "tariff_version": "v"},
            )
        ]
    )
    assert store.flush(20)  # the spool is not stuck behind the refused batch
    store.close()


def test_worker_to_influxdb_end_to_end(
    influxdb: InfluxStack, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from monitor.platform.config import load_settings

    s = load_settings(tmp_path / "none", {"MONITOR_MQTT_URL": mosquitto.url})
    metrics = Metrics()
    store = InfluxStore(settings(influxdb), tmp_path / "spool", metrics)
    state = SqliteState(tmp_path / "state.sqlite")
    worker = IngestWorker(s.mqtt, parse_broker_url(mosquitto.url), store, state, metrics)
    worker.start()
    assert worker.wait_connected(15)
    pub = Publisher(mosquitto.url)
    for i in range(500):
        pub.send(*reading(i, meter=f"M{i % 5}"))
    pub.wait_all()
    wait_for(lambda: worker.processed >= 500, 30, "500 processed")
    assert store.flush(30)
    counts = influxdb.rows("SELECT count(energy_kwh) FROM elec_reading GROUP BY meter")
    assert sorted((r["meter"], r["count"]) for r in counts) == [(f"M{m}", 100) for m in range(5)]
    worker.stop()
    store.close()
    state.close()
    pub.close()


# -- bulk reads (`series`) ----------------------------------------------------

FIELDS = ("energy_kwh", "current_a")


def test_series_by_district_and_window(influxdb: InfluxStack, tmp_path: Path) -> None:
    store = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    ts = [BASE_MS + i * 900_000 for i in range(5)]
    store.write(
        [
            Record(ELEC_READING, "M2", "TA1", ts[1], {"energy_kwh": 1.0, "current_a": 2.0}),
            Record(ELEC_READING, "M1", "TA1", ts[3], {"energy_kwh": 3.0}),
            Record(ELEC_READING, "M1", "TA1", ts[1], {"energy_kwh": 1.0}),
            Record(ELEC_READING, "M1", "TA1", ts[4], {"energy_kwh": 4.0}),  # after the window
            Record(ELEC_READING, "M1", "TA1", ts[0], {"energy_kwh": 0.5}),  # before it
            Record(ELEC_READING, "M3", "TB2", ts[2], {"energy_kwh": 7.0}),  # another district
        ]
    )
    store.write([Record(ELEC_READING, "M1", "TA1", ts[3], {"energy_kwh": 3.5})])  # overwrites
    assert store.flush(20)
    got = store.series(ELEC_READING, FIELDS, ts[1], ts[3], district="TA1")
    assert list(got) == ["M1", "M2"]
    assert got["M1"].ts_ms.tolist() == [ts[1], ts[3]]
    assert got["M1"].values["energy_kwh"].tolist() == [1.0, 3.5]
    assert got["M1"].column("current_a") is None
    assert got["M2"].values["current_a"].tolist() == [2.0]
    assert got["M1"].ts_ms.dtype == np.int64
    assert list(store.series(ELEC_READING, FIELDS, ts[0], ts[4])) == ["M1", "M2", "M3"]
    assert store.series(ELEC_READING, FIELDS, ts[0], ts[4], district="none") == {}
    store.close()


_cell = st.one_of(st.none(), st.floats(allow_nan=False, width=64), st.integers(-(2**40), 2**40))


@hsettings(max_examples=80, deadline=None)
@given(
    groups=st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.lists(st.tuples(st.integers(0, 2**50), _cell, _cell), max_size=12),
            st.permutations(["time", "energy_kwh", "current_a"]),
        ),
        max_size=5,
    )
)
def test_series_from_response_matches_the_points(
    groups: list[tuple[str, list[tuple[int, float | None, float | None]], list[str]]],
) -> None:
    """Any InfluxQL JSON answer (column order, meters over several series, nulls) → the
    Series a point-by-point reading gives."""
    series = []
    want: dict[str, list[tuple[int, float | None, float | None]]] = {}
    for meter, points, columns in groups:
        values = []
        for t, kwh, amps in points:
            by_name = {"time": t, "energy_kwh": kwh, "current_a": amps}
            values.append([by_name[c] for c in columns])
        series.append(
            {"name": "elec_reading", "tags": {"meter": meter}, "columns": columns, "values": values}
        )
        if points:
            want.setdefault(meter, []).extend(points)
    payload = json.loads(json.dumps({"results": [{"statement_id": 0, "series": series}]}))
    got = series_from_response(payload, FIELDS)
    assert list(got) == sorted(want)
    for meter, points in want.items():
        points = sorted(points, key=lambda p: p[0])  # stable: ties keep the answer's order
        s = got[meter]
        assert s.ts_ms.tolist() == [p[0] for p in points]
        for k, name in enumerate(FIELDS, start=1):
            expect = [math.nan if (v := p[k]) is None else float(v) for p in points]
            np.testing.assert_array_equal(s.values[name], expect)


def test_series_from_response_fills_a_missing_column_and_raises_errors() -> None:
    payload = {
        "results": [
            {
                "series": [
                    {
                        "tags": {"meter": "A"},
                        "columns": ["time", "energy_kwh"],
                        "values": [[5, 1.5]],
                    }
                ]
            }
        ]
    }
    got = series_from_response(payload, FIELDS)
    assert got["A"].values["energy_kwh"].tolist() == [1.5]
    assert np.isnan(got["A"].values["current_a"]).all()
    assert series_from_response({"results": [{"statement_id": 0}]}, FIELDS) == {}
    with pytest.raises(RuntimeError, match="InfluxQL error"):
        series_from_response({"results": [{"error": "boom"}]}, FIELDS)


# -- columnar reads (`columns`) ------------------------------------------------

STATUS = ("seal", "pulses_per_km", "tariff_version")


def test_columns_answer_as_the_embedded_store(influxdb: InfluxStack, tmp_path: Path) -> None:
    from monitor.store.embedded import EmbeddedStore

    def status(meter: str, i: int, **values: float | str) -> Record:
        return Record(TAXI_STATUS, meter, "", BASE_MS + i * 300_000, dict(values))

    records = [
        status("T2", 3, seal="intact", pulses_per_km=1000.0, tariff_version="A"),
        status("T1", 2, seal="broken", tariff_version="A"),
        status("T1", 1, seal="intact", pulses_per_km=1000.0, tariff_version="A"),
        status("T1", 4, pulses_per_km=1100.0),
        status("T1", 9, seal="intact"),  # outside the window
    ]
    influx = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    embedded = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    try:
        for store in (influx, embedded):
            store.write(records)
        assert influx.flush(20)
        window = (BASE_MS + 300_000, BASE_MS + 4 * 300_000)
        answers = []
        for store in (influx, embedded):
            of_all = store.columns(TAXI_STATUS, STATUS, *window)
            of_t1 = store.columns(TAXI_STATUS, STATUS, *window, meter="T1")
            answers.append((comparable(of_all), comparable(of_t1)))
        assert answers[0] == answers[1]
        every, one = answers[0]
        assert list(every) == ["T1", "T2"] and one == {"T1": every["T1"]}
        assert every["T1"] == [
            (BASE_MS + 300_000, "intact", 1000.0, "A"),
            (BASE_MS + 600_000, "broken", None, "A"),
            (BASE_MS + 1_200_000, None, 1100.0, None),
        ]
    finally:
        influx.close()
        embedded.close()


def comparable(got: dict[str, Columns]) -> dict[str, list[tuple[object, ...]]]:
    """Columns → rows (NaN → None) with the value types checked."""
    out = {}
    for meter, cols in got.items():
        assert cols.ts_ms.dtype == np.int64 and cols.values["pulses_per_km"].dtype == np.float64
        assert cols.values["seal"].dtype == object
        lists = [cols.values[f].tolist() for f in STATUS]
        out[meter] = [
            (ts, *(None if v != v else v for v in (c[i] for c in lists)))
            for i, ts in enumerate(cols.ts_ms.tolist())
        ]
    return out


def test_columns_from_response_joins_orders_and_fills() -> None:
    """Column order, a meter over several series out of order, nulls, a missing column."""
    payload = {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "taxi_status",
                        "tags": {"meter": "T2"},
                        "columns": ["time", "tariff_version", "seal"],
                        "values": [[5, "A", None], [3, None, "broken"]],
                    },
                    {
                        "name": "taxi_status",
                        "tags": {"meter": "T1"},
                        "columns": ["time", "seal", "tariff_version"],
                        "values": [[1, "intact", "A"]],
                    },
                    {
                        "name": "taxi_status",
                        "tags": {"meter": "T2"},
                        "columns": ["time", "seal", "tariff_version"],
                        "values": [[4, "intact", "B"]],
                    },
                ],
            }
        ]
    }
    got = columns_from_response(payload, STATUS, ("seal", "tariff_version"))
    assert list(got) == ["T1", "T2"]
    assert comparable(got) == {
        "T1": [(1, "intact", None, "A")],
        "T2": [(3, "broken", None, None), (4, "intact", None, "B"), (5, None, None, "A")],
    }
    assert columns_from_response({"results": [{"statement_id": 0}]}, STATUS, ()) == {}
    with pytest.raises(RuntimeError, match="boom"):
        columns_from_response({"results": [{"error": "boom"}]}, STATUS, ())


@hsettings(max_examples=200, deadline=None)
@given(
    start=st.integers(-(2**42), 2**42),
    span=st.integers(-5, 10 * 86_400_000),
    parts=st.integers(0, 7),
    min_ms=st.sampled_from([0, 1, 1000, 2 * 86_400_000]),
    probes=st.lists(st.floats(0.0, 1.0), max_size=20),
)
def test_window_parts_cut_the_window_into_disjoint_ranges(
    start: int, span: int, parts: int, min_ms: int, probes: list[float]
) -> None:
    """Every instant of [start, end], at ns precision, is in exactly one range; the ranges
    follow each other in time order."""
    end = start + span
    got = window_parts(start, end, parts, min_ms)
    assert got[0][0] == start and got[-1][1] == end
    assert len(got) == (parts if parts > 1 and span >= max(min_ms, parts) else 1)
    for (_, hi), (lo, _) in itertools.pairwise(got):
        assert hi == lo
    if span < 0:
        return
    instants = [
        start * 1_000_000,
        end * 1_000_000,
        *(start * 1_000_000 + round(p * span * 1_000_000) for p in probes),
    ]
    instants += [lo * 1_000_000 + d for lo, _ in got for d in (-1, 0, 1)]
    for t in instants:
        inside = start * 1_000_000 <= t <= end * 1_000_000
        hits = [
            k
            for k, (lo, hi) in enumerate(got)
            if lo * 1_000_000 <= t
            and (t <= hi * 1_000_000 if k == len(got) - 1 else t < hi * 1_000_000)
        ]
        assert len(hits) == (1 if inside else 0), (t, got)


def test_series_in_time_ranges_reads_the_same_as_one_query(
    influxdb: InfluxStack, tmp_path: Path
) -> None:
    """Points on and around the cuts (ms and ns precision), overwrites, a meter of another
    district and points outside the window: every split reads what one query reads."""
    store = InfluxStore(settings(influxdb), tmp_path / "spool", Metrics())
    start, end = BASE_MS, BASE_MS + 3 * 86_400_000 + 17
    cuts = sorted({lo for parts in range(2, 6) for lo, _ in window_parts(start, end, parts, 0)})
    records = []
    for k, t in enumerate([start - 1, *cuts, end, end + 1, *(c - 1 for c in cuts[1:])]):
        for meter in ("M1", "M2"):
            records.append(Record(ELEC_READING, meter, "TA1", t, {"energy_kwh": float(k)}))
        records.append(Record(ELEC_READING, "M3", "TB2", t, {"current_a": float(k)}))
    records.append(Record(ELEC_READING, "M2", "TA1", start + 5, {"current_a": 9.0}))
    store.write(records)
    store.write([Record(ELEC_READING, "M1", "TA1", cuts[1], {"energy_kwh": -1.0})])  # overwrite
    assert store.flush(20)
    # sub-ms instants straight to InfluxDB: half a ms before a cut, and after the window's end
    half = 500_000
    lines = [
        f"elec_reading,district=TA1,meter=M1 energy_kwh=7.5 {cuts[2] * 1_000_000 - half}",
        f"elec_reading,district=TA1,meter=M1 energy_kwh=8.5 {end * 1_000_000 + half}",
    ]
    httpx.post(
        f"{influxdb.server.url}/write", params={"db": influxdb.db}, content="\n".join(lines)
    ).raise_for_status()
    store.series_parts = 1
    whole = store.series(ELEC_READING, FIELDS, start, end, district="TA1")
    assert list(whole) == ["M1", "M2"]
    m1 = whole["M1"]
    assert m1.ts_ms[0] == start and m1.ts_ms[-1] == end
    assert (cuts[2] - 1) in m1.ts_ms.tolist()  # the half-ms point reads as its ms (floored)
    assert m1.values["energy_kwh"][m1.ts_ms.tolist().index(cuts[1])] == -1.0
    everyone = store.series(ELEC_READING, FIELDS, start, end)
    for parts in (2, 3, 5):
        store.series_parts = parts
        for district, want in (("TA1", whole), (None, everyone)):
            got = store.series(ELEC_READING, FIELDS, start, end, district=district)
            assert list(got) == list(want)
            for meter, s in want.items():
                np.testing.assert_array_equal(got[meter].ts_ms, s.ts_ms)
                for f in FIELDS:
                    np.testing.assert_array_equal(got[meter].values[f], s.values[f])
    store.close()
