"""The embedded store: duplicates idempotent, out-of-order lands by event time."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.ports import Columns, Series, group_series, meter_series
from monitor.core.schema import ELEC_READING, TAXI_STATUS, TAXI_TRIP, Record
from monitor.platform.metrics import Metrics
from monitor.store.embedded import LAYOUT, EmbeddedStore


def reading(meter: str, ts: int, kwh: float) -> Record:
    return Record(ELEC_READING, meter, "TA1", ts, {"energy_kwh": kwh, "current_a": 1.0})


def test_duplicates_and_disorder(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    store.write([reading("M1", 3000, 3.0), reading("M1", 1000, 1.0)])
    store.write([reading("M1", 2000, 2.0), reading("M1", 1000, 1.0), reading("M2", 1000, 9.0)])
    points = store.history(ELEC_READING, "M1", ["energy_kwh"], None, None, 100)
    assert [(p.ts_ms, p.values["energy_kwh"]) for p in points] == [
        (1000, 1.0),
        (2000, 2.0),
        (3000, 3.0),
    ]
    latest = store.latest(ELEC_READING, "M1")
    assert latest is not None and latest.ts_ms == 3000 and latest.values["district"] == "TA1"
    window = store.history(ELEC_READING, "M1", ["energy_kwh"], 1500, 3000, 100)
    assert [p.ts_ms for p in window] == [2000]
    store.close()


def test_resent_trip_is_one_trip(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    trip = Record(
        TAXI_TRIP, "T1", "", 5000, {"trip_id": "x", "meter_km": 4.0, "tariff_version": "v"}
    )
    store.write([trip, trip])
    store.write([trip])
    assert len(store.history(TAXI_TRIP, "T1", ["meter_km"], None, None, 10)) == 1
    assert store.health().writable
    store.close()


# -- columnar reads (`columns`) ------------------------------------------------

STATUS = ("seal", "pulses_per_km", "tariff_version")


def status(meter: str, ts: int, **values: float | str) -> Record:
    return Record(TAXI_STATUS, meter, "", ts, dict(values))


def test_columns_are_the_points_of_history_text_and_numbers(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    store.write(
        [
            status("T2", 3000, seal="intact", pulses_per_km=1000.0, tariff_version="A"),
            status("T1", 2000, seal="broken", tariff_version="A"),
            status("T1", 1000, seal="intact", pulses_per_km=1000.0, tariff_version="A"),
            status("T1", 4000, pulses_per_km=1100.0),
            status("T1", 9000, seal="intact"),  # outside the window
        ]
    )
    store.write([status("T1", 2000, seal="broken", tariff_version="B")])  # overwrites
    got = store.columns(TAXI_STATUS, STATUS, 1000, 4000)
    assert list(got) == ["T1", "T2"]
    t1 = got["T1"]
    assert t1.ts_ms.tolist() == [1000, 2000, 4000] and t1.ts_ms.dtype == np.int64
    assert t1.values["seal"].tolist() == ["intact", "broken", None]
    assert t1.values["tariff_version"].tolist() == ["A", "B", None]
    ppk = t1.values["pulses_per_km"]
    assert ppk.dtype == np.float64 and ppk[0] == 1000.0 and math.isnan(ppk[1])
    for meter, cols in got.items():
        history = store.history(TAXI_STATUS, meter, STATUS, 1000, 4001, 100)
        assert [p.ts_ms for p in history] == cols.ts_ms.tolist()
        for f in STATUS:
            values = [None if v != v else v for v in cols.values[f].tolist()]  # NaN → None
            assert values == [p.values[f] for p in history]
    one = store.columns(TAXI_STATUS, ["seal", "firmware", "nothing"], 0, 10_000, meter="T1")
    assert list(one) == ["T1"] and len(one["T1"]) == 4
    assert one["T1"].values["firmware"].tolist() == [None] * 4
    assert bool(np.isnan(one["T1"].values["nothing"]).all())
    assert store.columns(TAXI_STATUS, STATUS, 0, 10_000, meter="T9") == {}
    assert store.columns(TAXI_STATUS, STATUS, 5000, 8000) == {}
    store.close()


def as_rows(cols: dict[str, Columns], fields: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Columns → rows (NaN → None), with the value types checked."""
    out = {}
    for meter, c in cols.items():
        assert c.ts_ms.dtype == np.int64
        for f in fields:
            assert c.values[f].dtype == (object if f in ("seal", "tariff_version") else np.float64)
        lists = [c.values[f].tolist() for f in fields]
        out[meter] = [
            (ts, *(None if v != v else v for v in (col[i] for col in lists)))
            for i, ts in enumerate(c.ts_ms.tolist())
        ]
    return out


def history_rows(
    store: EmbeddedStore, meters: Sequence[str], fields: Sequence[str], start: int, end: int
) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for meter in meters:
        points = store.history(TAXI_STATUS, meter, fields, start, end + 1, 10**9)
        if points:
            out[meter] = [(p.ts_ms, *(p.values[f] for f in fields)) for p in points]
    return out


@settings(max_examples=25, deadline=None)
@given(
    beats=st.lists(
        st.tuples(
            st.sampled_from(["T1", "T2"]),
            st.integers(0, 4 * 288 - 1),  # 5-min slots over 4 days
            st.sampled_from([None, "intact", "broken", "ö ü"]),
            st.sampled_from([None, 1000.0, 1100.5]),
            st.sampled_from([None, "SH-2022", "SH-2026"]),
        ),
        max_size=80,
    ),
    late=st.lists(
        st.tuples(st.sampled_from(["T1", "T2"]), st.integers(0, 4 * 288 - 1)), max_size=5
    ),
    windows=st.lists(
        st.tuples(st.integers(-300, 4 * 288 + 300), st.integers(0, 3 * 288)), min_size=1, max_size=4
    ),
)
def test_columns_from_packed_days_are_the_rows(
    tmp_path_factory: pytest.TempPathFactory,
    beats: list[tuple[str, int, str | None, float | None, str | None]],
    late: list[tuple[str, int]],
    windows: list[tuple[int, int]],
) -> None:
    """Full days come from column blocks (packed on first read), partial days from the
    rows; a later write to a packed day drops its block: always what `history` reads."""
    store = EmbeddedStore(tmp_path_factory.mktemp("cols") / "t.sqlite", Metrics())
    slot = 300_000

    def record(meter: str, i: int, seal: Any, ppk: Any, version: Any) -> Record:
        values = {"seal": seal, "pulses_per_km": ppk, "tariff_version": version}
        return status(meter, i * slot, **{k: v for k, v in values.items() if v is not None})

    store.write([record(*b) for b in beats])
    fields = ["seal", "pulses_per_km", "tariff_version"]
    try:
        for round_ in range(2):
            for a, length in windows:
                start, end = a * slot, (a + length) * slot - 1
                expected = history_rows(store, ["T1", "T2"], fields, start, end)
                assert as_rows(store.columns(TAXI_STATUS, fields, start, end), fields) == expected
                one = store.columns(TAXI_STATUS, fields[::-1], start, end, meter="T2")
                assert as_rows(one, fields[::-1]) == {
                    m: [(r[0], *r[:0:-1]) for r in rows]
                    for m, rows in expected.items()
                    if m == "T2"
                }
            if round_ == 0:  # into packed days: their blocks go
                store.write([record(m, i, "late", 999.0, None) for m, i in late])
    finally:
        store.close()


def test_column_blocks_are_packed_once_and_dropped_by_a_write(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    day = 86_400_000
    store.write(
        [status("T1", d * day + 1000, seal="intact", pulses_per_km=1000.0) for d in range(3)]
    )
    got = store.columns(TAXI_STATUS, STATUS, 0, 3 * day - 1)
    assert got["T1"].values["seal"].tolist() == ["intact"] * 3
    db = sqlite3.connect(tmp_path / "t.sqlite")
    assert db.execute("SELECT day, n FROM taxi_status_days ORDER BY day").fetchall() == [
        (0, 1),
        (1, 1),
        (2, 1),
    ]
    store.write([status("T1", day + 2000, seal="broken")])
    assert db.execute("SELECT day FROM taxi_status_days ORDER BY day").fetchall() == [(0,), (2,)]
    got = store.columns(TAXI_STATUS, STATUS, 0, 3 * day - 1)
    assert got["T1"].values["seal"].tolist() == ["intact", "intact", "broken", "intact"]
    assert len(db.execute("SELECT day FROM taxi_status_days").fetchall()) == 3
    db.close()
    store.close()


# -- bulk reads (`series`) ----------------------------------------------------

FIELDS = ("energy_kwh", "current_a", "voltage_v", "clock_offset_s")


def elec(meter: str, district: str, ts: int, **values: float) -> Record:
    return Record(ELEC_READING, meter, district, ts, dict(values))


def as_lists(series: dict[str, Series]) -> dict[str, list[tuple[float | None, ...]]]:
    """Series → comparable rows (NaN → None)."""
    out: dict[str, list[tuple[float | None, ...]]] = {}
    for meter, s in series.items():
        cols = [s.values[f] for f in FIELDS]
        out[meter] = [
            (int(t), *(None if math.isnan(c[i]) else float(c[i]) for c in cols))
            for i, t in enumerate(s.ts_ms)
        ]
    return out


def test_series_window_district_and_absent_fields(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    store.write(
        [
            elec("M2", "D1", 1000, energy_kwh=1.0, current_a=2.0),
            elec("M1", "D1", 3000, energy_kwh=3.0),
            elec("M1", "D1", 1000, energy_kwh=1.0),
            elec("M1", "D1", 4000, energy_kwh=4.0),  # after the window
            elec("M1", "D1", 999, energy_kwh=0.5),  # before it
            elec("M3", "D2", 2000, energy_kwh=7.0),  # another district
            elec("M4", "D1", 5000, energy_kwh=9.0),  # of D1, but no point in the window
        ]
    )
    store.write([elec("M1", "D1", 2000, energy_kwh=2.0), elec("M1", "D1", 3000, energy_kwh=3.5)])
    got = store.series(ELEC_READING, FIELDS, 1000, 3000, district="D1")
    assert list(got) == ["M1", "M2"]
    assert as_lists(got) == {
        "M1": [
            (1000, 1.0, None, None, None),
            (2000, 2.0, None, None, None),
            (3000, 3.5, None, None, None),
        ],
        "M2": [(1000, 1.0, 2.0, None, None)],
    }
    assert got["M1"].column("current_a") is None and got["M2"].column("current_a") is not None
    assert got["M1"].ts_ms.dtype == np.int64 and got["M1"].values["energy_kwh"].dtype == np.float64
    assert list(store.series(ELEC_READING, FIELDS, 0, 10_000)) == ["M1", "M2", "M3", "M4"]
    assert store.series(ELEC_READING, FIELDS, 0, 10_000, district="D9") == {}
    assert store.meters(ELEC_READING, "D1") == ["M1", "M2", "M4"]
    assert store.meters(ELEC_READING) == ["M1", "M2", "M3", "M4"]
    store.close()


def test_a_meter_that_moved_district_is_read_per_district(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    store.write([elec("M1", "D1", 1000, energy_kwh=1.0), elec("M1", "D2", 2000, energy_kwh=2.0)])
    assert as_lists(store.series(ELEC_READING, FIELDS, 0, 5000, district="D1")) == {
        "M1": [(1000, 1.0, None, None, None)]
    }
    assert as_lists(store.series(ELEC_READING, FIELDS, 0, 5000, district="D2")) == {
        "M1": [(2000, 2.0, None, None, None)]
    }
    # A resent point lands in its new district: the (meter, ts) key overwrites.
    store.write([elec("M1", "D2", 1000, energy_kwh=1.5)])
    assert store.series(ELEC_READING, FIELDS, 0, 5000, district="D1") == {}
    assert len(store.series(ELEC_READING, FIELDS, 0, 5000, district="D2")["M1"].ts_ms) == 2
    store.close()


_value = st.one_of(st.none(), st.floats(allow_nan=False, width=64))


STEP = 6 * 3_600_000  # four points a day: windows span whole days (day blocks) and parts


@settings(max_examples=80, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from(["A", "B", "C", "A-1"]),
                    st.sampled_from(["D1", "D2"]),
                    st.integers(0, 24),
                    _value,
                    _value,
                ),
                max_size=20,
            ),
            # read after the batch: window (in steps, shifted by an hour or not) and district
            st.tuples(st.integers(-3, 27), st.integers(-3, 27), st.booleans()),
            st.sampled_from([None, "D1", "D2"]),
        ),
        max_size=5,
    )
)
def test_series_is_the_last_write_of_each_point_in_the_window(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[
        tuple[
            list[tuple[str, str, int, float | None, float | None]],
            tuple[int, int, bool],
            str | None,
        ]
    ],
) -> None:
    """Writes and reads interleaved: the days a read packs are dropped by later writes."""
    store = EmbeddedStore(tmp_path_factory.mktemp("s") / "t.sqlite", Metrics())
    truth: dict[tuple[str, int], tuple[str, float | None, float | None]] = {}
    for batch, (lo, hi, shift), district in batches:
        records = []
        for meter, dist, step, kwh, amps in batch:
            values = {k: v for k, v in (("energy_kwh", kwh), ("current_a", amps)) if v is not None}
            records.append(elec(meter, dist, step * STEP, **values))
            truth[(meter, step * STEP)] = (dist, kwh, amps)
        store.write(records)
        start = lo * STEP + (3_600_000 if shift else 0)
        end = hi * STEP - (1 if shift else 0)
        want: dict[str, list[tuple[float | None, ...]]] = {}
        for (meter, ts), (dist, kwh, amps) in sorted(truth.items()):
            if start <= ts <= end and district in (None, dist):
                want.setdefault(meter, []).append((ts, kwh, amps, None, None))
        got = store.series(ELEC_READING, FIELDS, start, end, district=district)
        assert as_lists(got) == want
        assert list(got) == sorted(want)
    store.close()


def test_full_days_are_packed_and_a_late_point_unpacks_its_day(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    day = 86_400_000
    store.write([elec("M1", "D1", t, energy_kwh=float(t // STEP)) for t in range(0, 3 * day, STEP)])
    store.write([elec("M1", "D2", day + STEP, energy_kwh=-1.0)])  # day 1 has two districts
    got = store.series(ELEC_READING, FIELDS, 0, 3 * day - 1, district="D1")
    assert got["M1"].ts_ms.tolist() == [t for t in range(0, 3 * day, STEP) if t != day + STEP]
    db = sqlite3.connect(tmp_path / "t.sqlite")
    packed = "SELECT day, district, mixed, n FROM elec_reading_days ORDER BY day"
    assert db.execute(packed).fetchall() == [(0, "D1", 0, 4), (1, None, 1, 4), (2, "D1", 0, 4)]
    store.write([elec("M1", "D1", 2 * day + 1, energy_kwh=9.0)])  # a late point of day 2
    assert [d for d, *_ in db.execute(packed)] == [0, 1]
    got = store.series(ELEC_READING, FIELDS, 0, 3 * day - 1, district="D1")
    assert 2 * day + 1 in got["M1"].ts_ms.tolist()
    assert got["M1"].values["energy_kwh"].flags.writeable
    assert [d for d, *_ in db.execute(packed)] == [0, 1, 2]
    db.close()
    store.close()


def test_a_block_keeps_the_fields_read_and_grows_when_more_are_asked(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    day = 86_400_000
    store.write(
        [elec("M1", "D1", t, energy_kwh=1.0, current_a=2.0, seq=3) for t in range(0, day, STEP)]
    )
    db = sqlite3.connect(tmp_path / "t.sqlite")
    fields = "SELECT fields FROM elec_reading_days"
    assert store.series(ELEC_READING, ["energy_kwh"], 0, day - 1)["M1"].values.keys() == {
        "energy_kwh"
    }
    assert db.execute(fields).fetchall() == [("energy_kwh",)]
    got = store.series(ELEC_READING, ["seq", "current_a"], 0, day - 1)["M1"]
    assert got.values["seq"].tolist() == [3.0] * 4 and got.values["current_a"].tolist() == [2.0] * 4
    assert db.execute(fields).fetchall() == [("energy_kwh,current_a,seq",)]
    db.close()
    store.close()


def test_packing_in_small_chunks_gives_the_same_series(tmp_path: Path) -> None:
    # pack_rows=3: a write transaction per meter or two
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics(), pack_rows=3)
    day = 86_400_000
    store.write(
        [
            elec(f"M{m}", "D1" if m % 3 else "D2", t, energy_kwh=float(m * 100 + t // STEP))
            for m in range(7)
            for t in range(0, 4 * day, STEP)
        ]
    )
    inner = as_lists(store.series(ELEC_READING, FIELDS, 1, 4 * day - 2, district="D1"))
    packed = as_lists(store.series(ELEC_READING, FIELDS, 0, 4 * day - 1, district="D1"))
    assert list(packed) == ["M1", "M2", "M4", "M5"]
    assert {m: r[1:] for m, r in packed.items()} == inner  # (the first point is at 0)
    assert as_lists(store.series(ELEC_READING, FIELDS, 0, 4 * day - 1, district="D1")) == packed
    store.close()


def test_days_that_cannot_be_packed_are_read_from_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    day = 86_400_000
    store.write([elec("M1", "D1", t, energy_kwh=float(t)) for t in range(0, 2 * day, STEP)])

    def locked(*args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "_pack", locked)
    got = store.series(ELEC_READING, FIELDS, 0, 2 * day - 1, district="D1")
    assert got["M1"].ts_ms.tolist() == list(range(0, 2 * day, STEP))
    store.close()


def _old_file(path: Path, version: int) -> None:
    """A file as layout 0 (index (district, ts)), 1 (index (district, meter)), 3 (day
    blocks without their fields) or 4 (blocks dropped by triggers) left it."""
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(
        "CREATE TABLE elec_reading (meter TEXT NOT NULL, ts INTEGER NOT NULL, district TEXT, "
        "energy_kwh REAL, reverse_kwh REAL, voltage_v REAL, current_a REAL, power_kw REAL, "
        "clock_offset_s REAL, seq INTEGER, PRIMARY KEY (meter, ts)) WITHOUT ROWID"
    )
    old.execute("CREATE INDEX elec_reading_time ON elec_reading (ts)")
    if version == 0:
        old.execute("CREATE INDEX elec_reading_district ON elec_reading (district, ts)")
    elif version in (3, 4):
        old.execute(
            "CREATE TABLE elec_reading_meters (district TEXT NOT NULL, meter TEXT NOT NULL, "
            "PRIMARY KEY (district, meter)) WITHOUT ROWID"
        )
        old.execute("INSERT INTO elec_reading_meters VALUES ('D1', 'M1'), ('D2', 'M2')")
        fields = "fields TEXT NOT NULL, " if version == 4 else ""
        old.execute(
            "CREATE TABLE elec_reading_days (meter TEXT NOT NULL, day INTEGER NOT NULL, "
            f"district TEXT, mixed INTEGER NOT NULL, n INTEGER NOT NULL, {fields}"
            "ts BLOB NOT NULL, vals BLOB NOT NULL, PRIMARY KEY (meter, day)) WITHOUT ROWID"
        )
        if version == 4:  # blocks were dropped by triggers
            old.execute(
                "CREATE TRIGGER elec_reading_days_on_insert AFTER INSERT ON elec_reading "
                "BEGIN DELETE FROM elec_reading_days WHERE meter = NEW.meter; END"
            )
        old.execute(f"PRAGMA user_version = {version}")
    else:
        old.execute("CREATE INDEX elec_reading_district_meter ON elec_reading (district, meter)")
        old.execute(f"PRAGMA user_version = {version}")
    old.executemany(
        "INSERT INTO elec_reading (meter, ts, district, energy_kwh, seq) VALUES (?, ?, ?, ?, ?)",
        [
            ("M1", 1000, "D1", 1.0, 1),
            ("M1", 2000, "D1", 2.0, 2),
            ("M2", 1000, "D2", 5.0, 1),
            ("M3", 1000, None, 6.0, 1),
        ],
    )
    old.close()


@pytest.mark.parametrize("version", [0, 1, 3, 4])
def test_an_older_file_is_migrated_on_open(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.sqlite"
    _old_file(path, version)
    store = EmbeddedStore(path, Metrics())
    assert store.meters(ELEC_READING, "D1") == ["M1"]  # listed from the rows already there
    store.write([elec("M1", "D1", 3000, energy_kwh=3.0), elec("M1", "D1", 1000, energy_kwh=1.1)])
    store.write([elec("M4", "D2", 1000, energy_kwh=8.0)])
    assert as_lists(store.series(ELEC_READING, FIELDS, 0, 5000, district="D1")) == {
        "M1": [(t, e, None, None, None) for t, e in ((1000, 1.1), (2000, 2.0), (3000, 3.0))]
    }
    assert list(store.series(ELEC_READING, FIELDS, 0, 5000, district="D2")) == ["M2", "M4"]
    assert list(store.series(ELEC_READING, FIELDS, 0, 5000)) == ["M1", "M2", "M3", "M4"]
    latest = store.latest(ELEC_READING, "M2")
    assert latest is not None and latest.values == {"district": "D2", "energy_kwh": 5.0, "seq": 1}
    store.close()

    db = sqlite3.connect(path)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not indexes & {"elec_reading_district", "elec_reading_district_meter"}
    assert "elec_reading_time" in indexes
    assert db.execute("PRAGMA user_version").fetchone()[0] == LAYOUT
    days = [r[1] for r in db.execute("PRAGMA table_info(elec_reading_days)")]
    assert "fields" in days
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
    assert db.execute("SELECT * FROM elec_reading_meters ORDER BY 1, 2").fetchall() == [
        ("D1", "M1"),
        ("D2", "M2"),
        ("D2", "M4"),
    ]
    db.close()
    again = EmbeddedStore(path, Metrics())  # a migrated file opens as it is
    assert again.meters(ELEC_READING, "D2") == ["M2", "M4"]
    again.close()


def test_district_of_a_measurement_without_one_is_refused(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    with pytest.raises(ValueError):
        store.series(TAXI_TRIP, ["meter_km"], 0, 1, district="D1")
    store.close()


# -- rows → Series ------------------------------------------------------------


def _rows(meters: list[str], n: int, seed: int) -> list[tuple[object, ...]]:
    rng = np.random.default_rng(seed)
    out: list[tuple[object, ...]] = []
    for meter in sorted(meters):
        for ts in sorted(rng.choice(10_000, size=n, replace=False).tolist()):
            out.append((meter, ts, float(rng.normal()), None if rng.random() < 0.3 else 1.5))
    return out


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-(2**62), 2**62),
            st.one_of(st.none(), st.floats(width=64), st.integers(-(2**40), 2**40)),
            st.one_of(st.none(), st.floats(width=64)),
        ),
        max_size=40,
    )
)
def test_meter_series_is_the_rows_column_by_column(
    rows: list[tuple[int, float | int | None, float | None]],
) -> None:
    s = meter_series(rows, ["a", "b"])
    assert s.ts_ms.dtype == np.int64 and s.ts_ms.tolist() == [r[0] for r in rows]
    for k, name in enumerate(("a", "b"), start=1):
        want = [math.nan if (v := r[k]) is None else float(v) for r in rows]
        np.testing.assert_array_equal(s.values[name], np.array(want, dtype=np.float64))


@settings(max_examples=40, deadline=None)
@given(
    meters=st.lists(st.text(min_size=1, max_size=4), max_size=5, unique=True), n=st.integers(1, 6)
)
def test_group_series_cuts_rows_per_meter(meters: list[str], n: int) -> None:
    rows = _rows(meters, n, 1)
    got = group_series(rows, ["x", "y"])
    assert list(got) == sorted(meters)
    for meter, s in got.items():
        mine = [r for r in rows if r[0] == meter]
        assert s.ts_ms.tolist() == [r[1] for r in mine]
        np.testing.assert_array_equal(s.values["x"], [r[2] for r in mine])
        np.testing.assert_array_equal(
            s.values["y"], [math.nan if r[3] is None else r[3] for r in mine]
        )


def test_meter_series_refuses_rows_of_the_wrong_width() -> None:
    with pytest.raises(ValueError):
        meter_series([(1, 2.0, 3.0)], ["a"])
    assert len(meter_series([], ["a"]).ts_ms) == 0
