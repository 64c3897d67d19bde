"""A pass from day summaries decides exactly what a full re-read decides, on both stores.

Hypothesis draws a small district (a master and three households, 15-minute registers
over five days) with gaps, readings held back and written late into old days, duplicates
(the same value, or a changed one), and `as_of` values (on, just before and just after
day boundaries, and anywhere): after each write, passes at those `as_of`s read the district
from the summaries (`load_district_days`, reading only marked, missing and partial days)
and from the telemetry store in one read (`load_district`), and the Series must be the
same to the bit, and so every meter's decision. Then the evaluation pass itself (the
runner with and without summaries) over a late write.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS, format_ts
from monitor.core.decision import Stamp
from monitor.core.ports import Series
from monitor.core.registry import MeterRow
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import ELEC_READING, Record
from monitor.electricity.days import (
    DayPiece,
    _join,
    _unpack,
    decode_day,
    encode_day,
    load_district_days,
    piece_of,
)
from monitor.electricity.evaluate import (
    READING_FIELDS,
    fit_district,
    load_district,
    meter_decision,
)
from monitor.evaluation.runner import Evaluator
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.service import day_summaries
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from tests.conftest import Stores
from tests.helpers import BASE_MS

REPO = Path(__file__).resolve().parent.parent
STEP = 900_000
PER_DAY = DAY_MS // STEP
DAYS = 5
FIELDS = list(READING_FIELDS)
METERS = ["M0", "M1", "M2", "M3"]  # M0 is the master
START = (BASE_MS // DAY_MS) * DAY_MS  # a UTC midnight
BOOK = load_rules(REPO / "config" / "rules.yaml")


def rules_for(window_days: float) -> RuleBook:
    """The shipped rules with a window of days and gates a small district can pass."""
    est = BOOK.rules.elec.estimation.model_copy(
        update={"window_days": window_days, "min_intervals": 20, "min_completeness": 0.5}
    )
    elec = BOOK.rules.elec.model_copy(update={"estimation": est})
    return replace(BOOK, rules=BOOK.rules.model_copy(update={"elec": elec}))


def readings(district: str, seed: int) -> dict[tuple[str, int], Record]:
    """Every reading of the district: households' registers, the master's their sum plus a
    loss, each meter with its own error; voltage and current on some, never reverse."""
    rng = np.random.default_rng(seed)
    n = DAYS * PER_DAY
    use = rng.gamma(2.0, 0.05, (len(METERS) - 1, n))
    gains = 1 + rng.normal(0, 0.01, len(METERS) - 1)
    master = use.sum(axis=0) * 1.03 + 0.01
    flows = np.vstack([master, use * gains[:, None]])
    registers = np.round(np.cumsum(flows, axis=1) + 100, 3)
    out = {}
    for k, meter in enumerate(METERS):
        for i in range(n):
            values: dict[str, float | int | str] = {"energy_kwh": float(registers[k, i])}
            if k % 2:
                values["voltage_v"] = round(float(rng.normal(220, 2)), 1)
                values["current_a"] = round(float(flows[k, i] * 16), 2)
            out[(meter, i)] = Record(ELEC_READING, meter, district, START + i * STEP, values)
    return out


def same(a: dict[str, Series], b: dict[str, Series]) -> None:
    assert list(a) == list(b)
    for m in a:
        assert a[m].ts_ms.dtype == b[m].ts_ms.dtype and a[m].ts_ms.tolist() == b[m].ts_ms.tolist()
        assert list(a[m].values) == list(b[m].values)
        for f, col in a[m].values.items():
            assert col.dtype == b[m].values[f].dtype
            assert col.tobytes() == b[m].values[f].tobytes(), (m, f)


def decisions(district: str, series: dict[str, Series], as_of: int, book: RuleBook) -> list[object]:
    rules = book.rules.elec
    start = as_of - int(rules.estimation.window_days * DAY_MS)
    dist = fit_district(district, series, "M0", rules, start, as_of)
    stamp = Stamp(format_ts(as_of), book.version)
    return [
        meter_decision(m, None, dist, [], rules, stamp, None).as_dict() for m in sorted(series)
    ] + [dist.report({}, stamp)]


def as_of_values() -> st.SearchStrategy[int]:
    """Anywhere in the five days, and on, just before and just after their boundaries."""
    day = st.integers(1, DAYS)
    edge = st.sampled_from([0, -1, 1, STEP, -STEP])
    return st.one_of(
        st.builds(lambda d, e: START + d * DAY_MS + e, day, edge),
        st.integers(START + DAY_MS // 2, START + DAYS * DAY_MS + DAY_MS // 3),
    )


spans = st.tuples(st.sampled_from(METERS), st.integers(0, DAYS * PER_DAY - 1), st.integers(1, 150))


@given(
    seed=st.integers(0, 2**16),
    gaps=st.lists(spans, max_size=3),
    held=st.lists(spans, max_size=3),
    duplicates=st.lists(
        st.tuples(st.sampled_from(METERS), st.integers(0, DAYS * PER_DAY - 1), st.booleans()),
        max_size=6,
    ),
    window=st.sampled_from([1.0, 2.5, 3.0]),
    first=st.lists(as_of_values(), min_size=1, max_size=3),
    second=st.lists(as_of_values(), min_size=1, max_size=3),
)
@hsettings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_day_summaries_read_and_decide_exactly_what_a_full_read_does(
    stores: Stores,
    seed: int,
    gaps: list[tuple[str, int, int]],
    held: list[tuple[str, int, int]],
    duplicates: list[tuple[str, int, bool]],
    window: float,
    first: list[int],
    second: list[int],
) -> None:
    store, state = stores.store, stores.state
    district = f"D{uuid.uuid4().hex[:8]}"  # examples share the stores, not the district
    every = readings(district, seed)
    for meter, i, length in gaps:
        for j in range(i, i + length):
            every.pop((meter, j), None)
    late = {
        key: every.pop(key)
        for meter, i, length in held
        for key in [(meter, j) for j in range(i, i + length)]
        if key in every
    }
    book = rules_for(window)

    def check(as_of: int) -> None:
        start = as_of - int(window * DAY_MS)
        full = load_district(store, district, start, as_of)
        inc, _ = load_district_days(
            store, state, district, start, as_of, state.mark_sequence(), FIELDS
        )
        same(inc, full)
        assert decisions(district, inc, as_of, book) == decisions(district, full, as_of, book)

    store.write(list(every.values()))
    assert store.flush(20)
    for as_of in first:
        check(as_of)
    rewrites = []
    for meter, i, changed in duplicates:
        old = every.get((meter, i)) or late.get((meter, i))
        if old is not None:
            kwh = float(old.values["energy_kwh"]) + (0.5 if changed else 0.0)
            rewrites.append(Record(ELEC_READING, meter, district, old.ts_ms, {"energy_kwh": kwh}))
    store.write([*late.values(), *rewrites])
    assert store.flush(20)
    for as_of in [*second, *first]:
        check(as_of)


def test_a_day_summary_keeps_every_bit_and_says_when_it_is_of_another_kind() -> None:
    ts = np.array([5, 900_005, 3, 7], dtype=np.int64) + 20_000 * DAY_MS
    values = {
        "energy_kwh": np.array([0.1, np.nan, -0.0, 1e300]),
        "voltage_v": np.full(4, np.nan),
    }
    piece = piece_of(
        {
            "B": Series(ts[2:], {f: v[2:] for f, v in values.items()}),
            "A": Series(ts[:2], {f: v[:2] for f, v in values.items()}),
        },
        ["energy_kwh", "voltage_v"],
    )
    body = encode_day(piece, 20_000)
    back = decode_day(body, 20_000, ["energy_kwh", "voltage_v"])
    assert back is not None
    assert back.meters == ["A", "B"] and back.counts.tolist() == [2, 2]
    assert back.ts.tolist() == [ts[0], ts[1], ts[2], ts[3]]
    col = back.cols["energy_kwh"]
    assert col is not None and col.tobytes() == np.array([0.1, np.nan, -0.0, 1e300]).tobytes()
    assert back.cols["voltage_v"] is None  # absent: not stored
    assert decode_day(body, 20_001, ["energy_kwh", "voltage_v"]) is None  # another day
    assert decode_day(body, 20_000, ["energy_kwh"]) is None  # other fields
    with pytest.raises(ValueError, match="outside day"):
        encode_day(piece, 19_999)


def test_the_pass_with_summaries_decides_as_the_pass_without_and_reads_only_what_changed(
    stores: Stores, tmp_path: Path
) -> None:
    store, state = stores.store, stores.state
    district = "TA1"
    every = readings(district, 7)
    late = {k: every.pop(k) for k in [("M2", 100), ("M2", 101), ("M0", 101)]}  # day 1
    registry = [
        MeterRow.model_validate(
            {
                "meter_id": m,
                "kind": "elec",
                "district": district,
                "role": "master" if m == "M0" else "customer",
            }
        )
        for m in METERS
    ]
    state.upsert_meters(registry)
    full_state = SqliteState(tmp_path / "full-state.sqlite")
    full_state.upsert_meters(registry)
    book = rules_for(3.0)
    incremental = Evaluator(store, state, summaries=state)
    full = Evaluator(store, full_state)
    store.write(list(every.values()))
    assert store.flush(20)
    as_of = START + DAYS * DAY_MS - 3 * STEP

    def run_both(at: int) -> None:
        a, b = incremental.run(at, book), full.run(at, book)
        assert {m: d.as_dict() for m, d in a.meters.items()} == {
            m: d.as_dict() for m, d in b.meters.items()
        }
        stamp = Stamp(a.as_of, a.rules_version)
        assert a.districts[district].report(a.meters, stamp) == b.districts[district].report(
            b.meters, stamp
        )

    run_both(as_of)
    kept = state.day_summaries(district, 0, 10**9)
    assert sorted(kept) == [START // DAY_MS + d for d in range(1, DAYS - 1)]
    store.write(list(late.values()))  # late readings into day 1
    assert store.flush(20)
    complete = START // DAY_MS + DAYS - 2  # the partial last day stays marked, unsummarised
    # (Day 0, before the window, was never summarised: its marks stay for a backtest.)
    window = START // DAY_MS + 1
    assert state.marked_days(district, window, complete) == {START // DAY_MS + 1}
    run_both(as_of)
    again = state.day_summaries(district, 0, 10**9)
    assert {d for d in kept if kept[d] != again[d]} == {START // DAY_MS + 1}  # that day only
    assert state.marked_days(district, window, complete) == set()
    full_state.close()


def test_summaries_are_off_where_a_writer_would_not_mark_this_state(tmp_path: Path) -> None:
    influx = {
        "MONITOR_STORE": "influxdb",
        "MONITOR_INFLUX_URL": "http://influx:8086/",
        "MONITOR_INFLUX_BUCKET": "b",
    }
    shared = {"MONITOR_MQTT__SHARED_GROUP": "workers"}
    off = {"MONITOR_SCHEDULING__DAY_SUMMARIES": "false"}

    def on(env: dict[str, str]) -> bool:
        return day_summaries(load_settings(tmp_path / "none", env))

    assert on({}) and on(influx) and on(shared)  # one writer, or each with its own store
    assert not on(influx | shared)  # workers sharing InfluxDB, each marking its own state
    assert not on(off)


def test_rules_backtest_replays_from_the_day_summaries_and_finds_what_a_full_read_finds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    small = (
        (REPO / "config" / "rules.yaml")
        .read_text(encoding="utf-8")
        .replace("window_days: 30 ", "window_days: 3 ")
        .replace("min_intervals: 300 ", "min_intervals: 20 ")
        .replace("min_completeness: 0.99 ", "min_completeness: 0.5 ")
    )
    candidate = small.replace("watch_fraction: 0.6", "watch_fraction: 0.05")
    assert candidate != small != (REPO / "config" / "rules.yaml").read_text(encoding="utf-8")
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    (config / "rules.yaml").write_text(small, encoding="utf-8")
    (config / "tariffs.yaml").write_bytes((REPO / "config" / "tariffs.yaml").read_bytes())
    (tmp_path / "candidate.yaml").write_text(candidate, encoding="utf-8")
    state = SqliteState(data / "state.sqlite")
    store = EmbeddedStore(data / "telemetry.sqlite", Metrics(), marks=state)
    district = "TA1"
    records = list(readings(district, 11).values())
    state.upsert_meters(
        MeterRow.model_validate(
            {"meter_id": m, "kind": "elec", "district": district}
            | ({"role": "master", "accuracy_class": "0.5S"} if m == "M0" else {})
            | ({} if m == "M0" else {"role": "customer", "accuracy_class": "2"})
        )
        for m in METERS
    )
    store.write(records)
    state.note_records(records, (START + DAYS * DAY_MS) / 1000)  # received as they came
    state.flush_seen()
    store.close()
    state.close()

    def backtest(summaries: bool) -> tuple[str, int]:
        env = {
            "MONITOR_CONFIG": str(config),
            "MONITOR_DATA_DIR": str(data),
            "MONITOR_SCHEDULING__DAY_SUMMARIES": str(summaries).lower(),
        }
        assert (
            main(["rules", "backtest", str(tmp_path / "candidate.yaml"), "--since", "1"], env) == 0
        )
        kept = SqliteState(data / "state.sqlite")
        days = len(kept.day_summaries(district, 0, 10**9))
        kept.close()
        return capsys.readouterr().out, days

    full, none_kept = backtest(False)
    assert none_kept == 0 and "decision(s) differ" in full
    assert " 0 decision(s) differ" not in full  # the candidate changes something to compare
    from_days, kept = backtest(True)
    assert kept > 0  # the replay made (and read) the summaries
    assert from_days == full
    assert backtest(True) == (full, kept)  # again, now from the summaries alone


decimals = st.one_of(
    st.integers(-(10**12), 10**12).flatmap(
        lambda k: st.integers(0, 9).map(lambda s: float(f"{k}e-{s}"))
    ),
    st.sampled_from([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e300, 0.1 + 0.2]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def day_pieces(draw: st.DrawFn, day: int) -> DayPiece:
    """A day of a few meters: times anywhere in the day (on a grid or not), columns of
    decimals of any scale, odd values among them (NaN, -0.0, ±inf, no short decimal),
    or absent."""
    meters = sorted(draw(st.sets(st.sampled_from(METERS), max_size=len(METERS))))
    grid = draw(st.sampled_from([1, 7, 1000, STEP]))
    series = {}
    for m in meters:
        offsets = draw(st.sets(st.integers(0, (DAY_MS - 1) // grid), min_size=1, max_size=120))
        ts = np.array(sorted(offsets), dtype=np.int64) * grid + day * DAY_MS
        series[m] = Series(ts, {})
    n = sum(len(s.ts_ms) for s in series.values())
    cols: dict[str, NDArray[np.float64]] = {}
    for f in FIELDS[:3]:
        kind = draw(st.sampled_from(["decimals", "steady", "absent"]))
        if kind == "absent":
            continue
        if kind == "steady":  # a register: small steps, a few odd values
            start = draw(st.integers(0, 10**9))
            scale = draw(st.integers(0, 4))
            steps = np.array(draw(st.lists(st.integers(0, 5000), min_size=n, max_size=n)))
            col = (start + np.cumsum(steps)) / 10.0**scale
            for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=2 if n else 0)):
                col[i] = draw(decimals)
        else:
            col = np.array(draw(st.lists(decimals, min_size=n, max_size=n)), dtype=np.float64)
        cols[f] = col
    at = 0
    for m in meters:
        k = len(series[m].ts_ms)
        series[m] = Series(series[m].ts_ms, {f: c[at : at + k] for f, c in cols.items()})
        at += k
    return piece_of(series, FIELDS[:3])


def joined(pieces: list[DayPiece], fields: list[str]) -> dict[str, Series]:
    """What one read of the pieces' span answers, built meter by meter."""
    out = {}
    for m in sorted({m for p in pieces for m in p.meters}):
        ts: list[NDArray[np.int64]] = []
        cols: dict[str, list[NDArray[np.float64]]] = {f: [] for f in fields}
        for p in pieces:
            if m not in p.meters:
                continue
            i = p.meters.index(m)
            a = int(p.counts[:i].sum())
            rows = slice(a, a + int(p.counts[i]))
            ts.append(p.ts[rows])
            for f in fields:
                col = p.cols[f]
                cols[f].append(np.full(rows.stop - a, np.nan) if col is None else col[rows])
        out[m] = Series(np.concatenate(ts), {f: np.concatenate(cols[f]) for f in fields})
    return out


@given(data=st.data(), days=st.integers(1, 4))
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_day_summaries_of_any_values_give_back_every_bit_alone_and_joined(
    data: st.DataObject, days: int
) -> None:
    """Every value (decimals of any scale, odd ones, absent columns) and time comes back
    to the bit from a summary alone and from a window that joins summaries with pieces
    read from the store, whatever mix of scales and time units the days have."""
    fields = FIELDS[:3]
    pieces = [data.draw(day_pieces(20_000 + d)) for d in range(days)]
    for d, piece in enumerate(pieces):
        back = decode_day(encode_day(piece, 20_000 + d), 20_000 + d, fields)
        assert back is not None
        assert back.meters == piece.meters and back.counts.tolist() == piece.counts.tolist()
        assert back.ts.tobytes() == piece.ts.tobytes()
        for f in fields:
            col, got = piece.cols[f], back.cols[f]
            assert (col is None and got is None) or (
                col is not None and got is not None and got.tobytes() == col.tobytes()
            )
    kept = data.draw(st.lists(st.booleans(), min_size=days, max_size=days))
    parts = [
        _unpack(encode_day(p, 20_000 + d), 20_000 + d, fields, zstandard.ZstdDecompressor())
        if keep
        else p
        for d, (p, keep) in enumerate(zip(pieces, kept, strict=True))
    ]
    assert all(p is not None for p in parts)
    same(_join([p for p in parts if p is not None], fields), joined(pieces, fields))
