"""A taxi pass from day summaries reads and decides exactly what a full re-read does, on
both stores.

Hypothesis draws a small fleet (a few taxis over four days: heartbeats every 15 minutes
with runs of seal, pulse constant and tariff, broken seals among them; trips; events),
points held back and written late into old days, duplicates (the same values, or changed
ones; a trip re-sent with another end time), a meter the pass starts deciding only later, and `as_of` values (on, just before
and just after day boundaries, and anywhere): at each, the window's `TaxiData` loaded
from the summaries (`taxi.days`: reading only marked, missing and partial days) must
equal the full read's, and so must every decision. Then the runner's pass with and
without summaries, and what the summaries keep.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from monitor.core.clock import DAY_MS, format_ts
from monitor.core.decision import Stamp
from monitor.core.ports import (
    TAXI_DAY_BUCKETS,
    Columns,
    MeterPoint,
    taxi_day_key,
)
from monitor.core.registry import MeterRow
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import TAXI_EVENT, TAXI_STATUS, TAXI_TRIP, Record
from monitor.evaluation.runner import Evaluator
from monitor.store.state import SqliteState
from monitor.taxi import evaluate as evaluate_taxi
from monitor.taxi.days import KEYS, TaxiDay, decode, encode, load_taxi_days
from monitor.taxi.seals import HEARTBEAT_FIELDS
from monitor.taxi.tariff import default_tariff_book
from monitor.taxi.trips import Trip
from tests.conftest import Stores
from tests.helpers import BASE_MS

REPO = Path(__file__).resolve().parent.parent
BEAT = 900_000  # a heartbeat every 15 minutes (the rules do not care how often)
PER_DAY = DAY_MS // BEAT
DAYS = 4
START = (BASE_MS // DAY_MS) * DAY_MS  # a UTC midnight
BOOK = load_rules(REPO / "config" / "rules.yaml")
TARIFFS = default_tariff_book()


def rules_for(window_days: float) -> RuleBook:
    """The shipped rules with a taxi window of days."""
    distance = BOOK.rules.taxi.distance.model_copy(update={"window_days": window_days})
    taxi = BOOK.rules.taxi.model_copy(update={"distance": distance})
    return replace(BOOK, rules=BOOK.rules.model_copy(update={"taxi": taxi}))


Key = tuple[str, str, int]  # (measurement, meter, index)


def telemetry(meters: list[str], seed: int) -> dict[Key, Record]:
    """Every point of the fleet: heartbeats in runs (seal intact or now and then broken,
    a pulse constant that changes once in a while, a tariff version applied once),
    a few trips a day with a trip id each, and events now and then."""
    rng = np.random.default_rng(seed)
    out: dict[Key, Record] = {}
    for meter in meters:
        seal, ppk, tariff = "intact", 1000.0, "SH-2019"
        for i in range(DAYS * PER_DAY):
            r = rng.random()
            if r < 0.03:
                seal = "broken" if seal == "intact" else "intact"
            elif r < 0.05:
                ppk = float(rng.choice([1000.0, 1000.5, 998.25]))
            elif r < 0.06:
                tariff = "SH-2022"
            values: dict[str, float | int | str] = {"seal": seal, "tariff_version": tariff}
            if rng.random() < 0.9:  # now and then without the pulse constant
                values["pulses_per_km"] = ppk
            out[TAXI_STATUS.name, meter, i] = Record(
                TAXI_STATUS, meter, "", START + i * BEAT + 7, values
            )
        for i in range(int(rng.integers(2, 5)) * DAYS):
            end = START + int(rng.integers(0, DAYS * DAY_MS))
            km = round(float(rng.uniform(1, 30)), 2)
            out[TAXI_TRIP.name, meter, i] = Record(
                TAXI_TRIP,
                meter,
                "",
                end,
                {
                    "trip_id": f"{meter}-{i}",
                    "start_ts": end - int(rng.integers(300_000, 3_600_000)),
                    "meter_km": km,
                    "gps_km": round(km * float(rng.normal(1.0, 0.02)), 2),
                    "fare_cny": round(14 + 2.5 * km, 1),
                    "tariff_version": "SH-2022",
                },
            )
        for i in range(int(rng.integers(0, 4))):
            code = str(rng.choice(["power_cycle", "param_change", "seal_broken"]))
            out[TAXI_EVENT.name, meter, i] = Record(
                TAXI_EVENT, meter, "", START + int(rng.integers(0, DAYS * DAY_MS)), {"code": code}
            )
    return out


def as_of_values() -> st.SearchStrategy[int]:
    """Anywhere in the four days, and on, just before and just after their boundaries."""
    day = st.integers(1, DAYS)
    edge = st.sampled_from([0, -1, 1, BEAT, -BEAT])
    return st.one_of(
        st.builds(lambda d, e: START + d * DAY_MS + e, day, edge),
        st.integers(START + DAY_MS // 2, START + DAYS * DAY_MS + DAY_MS // 3),
    )


picks = st.tuples(
    st.sampled_from([TAXI_STATUS.name, TAXI_TRIP.name, TAXI_EVENT.name]),
    st.integers(0, 4),  # which meter
    st.integers(0, DAYS * PER_DAY - 1),  # which point (modulo the meter's count)
    st.integers(1, 40),  # how many after it
)


def decisions(
    state: SqliteState, meters: list[str], data: evaluate_taxi.TaxiData, as_of: int, book: RuleBook
) -> dict[str, object]:
    stamp = Stamp(format_ts(as_of), book.version)
    got = evaluate_taxi.decide_taxis(
        meters, {}, data, TARIFFS, book.rules.taxi, state, as_of, stamp
    )
    return {m: d.as_dict() for m, d in got.items()}


@given(
    seed=st.integers(0, 2**16),
    held=st.lists(picks, max_size=4),
    duplicates=st.lists(st.tuples(picks, st.booleans()), max_size=6),
    window=st.sampled_from([1.0, 2.5, 3.0]),
    first=st.lists(as_of_values(), min_size=1, max_size=3),
    second=st.lists(as_of_values(), min_size=1, max_size=3),
)
@hsettings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_taxi_day_summaries_load_and_decide_exactly_what_a_full_read_does(
    stores: Stores,
    seed: int,
    held: list[tuple[str, int, int, int]],
    duplicates: list[tuple[tuple[str, int, int, int], bool]],
    window: float,
    first: list[int],
    second: list[int],
) -> None:
    store, state = stores.store, stores.state
    # Examples share the stores (and so each other's trips, which every pass reads).
    tag = uuid.uuid4().hex[:6]
    fleet = [f"T{tag}{k}" for k in range(5)]
    every = telemetry(fleet, seed)
    keys = sorted(every)

    def pick(what: str, k: int, i: int) -> list[Key]:
        own = [key for key in keys if key[0] == what and key[1] == fleet[k]]
        return own[i % len(own) :] if own else []

    late = {
        key: every.pop(key)
        for what, k, i, n in held
        for key in pick(what, k, i)[:n]
        if key in every
    }
    book = rules_for(window)
    decided = fleet[:4]  # the fifth taxi is decided only later (registered after)

    def check(as_of: int) -> None:
        start = evaluate_taxi.window_start(as_of, book.rules.taxi)
        full = evaluate_taxi.load(store, state, start, as_of, decided)
        inc = evaluate_taxi.load(store, state, start, as_of, decided, summaries=state)
        assert inc == full
        assert list(inc.trips) == list(full.trips) and list(inc.status) == list(full.status)
        assert decisions(state, decided, inc, as_of, book) == decisions(
            state, decided, full, as_of, book
        )

    store.write(list(every.values()))
    assert store.flush(20)
    for as_of in first:
        check(as_of)
    rewrites = []
    for (what, k, i, n), changed in duplicates:
        for key in pick(what, k, i)[: min(n, 3)]:
            old = every.get(key) or late.get(key)
            if old is None:
                continue
            values, ts = dict(old.values), old.ts_ms
            if changed and what == TAXI_STATUS.name:
                values["seal"] = "broken" if values["seal"] == "intact" else "intact"
            elif changed and what == TAXI_TRIP.name:
                # Another fare and another end time: the embedded store moves the trip's
                # row to the next (or previous) day; InfluxDB keeps both copies.
                values["fare_cny"] = float(values["fare_cny"]) + 3.0
                ts += DAY_MS if ts + DAY_MS < START + DAYS * DAY_MS else -DAY_MS
            elif changed:
                values["detail"] = "again"
            rewrites.append(replace(old, values=values, ts_ms=ts))
    store.write([*late.values(), *rewrites])
    assert store.flush(20)
    decided = fleet
    for as_of in [*second, *first]:
        check(as_of)


def test_a_late_trip_rereads_its_buckets_day_only(stores: Stores) -> None:
    store, state = stores.store, stores.state
    fleet = [f"T{k}" for k in range(12)]
    every = telemetry(fleet, 3)
    trip = every.pop((TAXI_TRIP.name, "T1", 0))
    store.write(list(every.values()))
    assert store.flush(20)
    as_of = START + DAYS * DAY_MS - 5 * BEAT  # days 0..2 complete, day 3 partial
    start = START  # a window starting at a midnight: no partial first day
    _, read = load_taxi_days(store, state, fleet, start, as_of, state.mark_sequence())
    assert (read.kept, read.read, read.saved) == (0, 3 * TAXI_DAY_BUCKETS, 3 * TAXI_DAY_BUCKETS)
    _, again = load_taxi_days(store, state, fleet, start, as_of, state.mark_sequence())
    assert (again.kept, again.read) == (3 * TAXI_DAY_BUCKETS, 0)
    assert again.ranges == [(START + 3 * DAY_MS, as_of)]  # only the partial day
    late = replace(trip, ts_ms=START + DAY_MS + 5_000)
    store.write([late])
    assert store.flush(20)
    key = taxi_day_key("T1")
    assert state.marked_days(key, 0, START // DAY_MS + 2) == {START // DAY_MS + 1}
    upto = state.mark_sequence()
    after, third = load_taxi_days(store, state, fleet, start, as_of, upto)
    assert third.read == 1 and third.ranges[0] == (START + DAY_MS, START + 2 * DAY_MS - 1)
    assert [t.trip_id for t in after.trips["T1"] if t.end_ms == late.ts_ms] == [
        trip.values["trip_id"]
    ]
    assert state.marked_days(key, 0, START // DAY_MS + 2) == set()
    full = evaluate_taxi.load(store, state, start, as_of, fleet)
    inc = evaluate_taxi.load(store, state, start, as_of, fleet, summaries=state)
    assert inc == full


def test_the_taxi_pass_with_summaries_decides_as_the_pass_without(
    stores: Stores, tmp_path: Path
) -> None:
    store, state = stores.store, stores.state
    fleet = [f"T{k}" for k in range(6)]
    every = telemetry(fleet, 11)
    late = {k: every.pop(k) for k in list(every)[5:40]}  # heartbeats of T0, day 0
    registry = [MeterRow.model_validate({"meter_id": m, "kind": "taxi"}) for m in fleet]
    full_state = SqliteState(tmp_path / "full-state.sqlite")
    for s in (state, full_state):
        s.upsert_meters(registry)
    book = rules_for(4.0)  # from just before day 0: days 0..2 complete, day 3 partial
    incremental = Evaluator(store, state, summaries=state)
    full = Evaluator(store, full_state)
    store.write(list(every.values()))
    assert store.flush(20)
    as_of = START + DAYS * DAY_MS - 3 * BEAT

    def run_both() -> None:
        a, b = incremental.run(as_of, book), full.run(as_of, book)
        assert a.meters and {m: d.as_dict() for m, d in a.meters.items()} == {
            m: d.as_dict() for m, d in b.meters.items()
        }

    run_both()
    kept = {k: state.day_summaries(k, 0, 10**9) for k in KEYS}
    assert all(len(days) == DAYS - 1 for days in kept.values())  # the complete days
    store.write(list(late.values()))
    assert store.flush(20)
    run_both()
    changed = {
        (k, d)
        for k in KEYS
        for d, body in state.day_summaries(k, 0, 10**9).items()
        if kept[k][d] != body
    }
    assert changed == {(taxi_day_key("T0"), START // DAY_MS)}
    full_state.close()


def test_a_taxi_day_summary_keeps_every_point_and_says_when_it_is_of_another_kind() -> None:
    day = 20_000
    beats = Columns(
        np.array([5, 900_005], dtype=np.int64) + day * DAY_MS,
        {
            "seal": np.array(["intact", None], dtype=object),
            "pulses_per_km": np.array([0.1, np.nan]),
            "tariff_version": np.array([None, "SH-2022"], dtype=object),
        },
    )
    trip = Trip("a", 3, day * DAY_MS + 9, 1e300, 0.1, "SH-2022", None, 5.0)
    event = MeterPoint("T2", day * DAY_MS + 1, {"code": "power_cycle", "n": 3, "x": -0.0})
    piece = TaxiDay({"T1": [trip], "T3": []}, {"T2": [event]}, {"T1": beats}, ["T1", "T2"])
    back = decode(encode(piece, day), day)
    assert back is not None
    assert back.trips == piece.trips and back.events == piece.events
    assert back.covered == ["T1", "T2"]
    got = back.beats["T1"]
    assert got.ts_ms.tolist() == beats.ts_ms.tolist() and list(got.values) == list(HEARTBEAT_FIELDS)
    assert got.values["seal"].tolist() == ["intact", None]
    assert got.values["pulses_per_km"].tobytes() == beats.values["pulses_per_km"].tobytes()
    assert isinstance(back.trips["T1"][0].start_ms, int)
    assert isinstance(back.events["T2"][0].values["n"], int)
    assert decode(encode(piece, day), day + 1) is None  # another day


def test_taxi_keys_are_stable_buckets_no_district_can_be_named() -> None:
    assert taxi_day_key("T1") == "taxi/21"  # CRC-32 of "T1" is 0xCED08A95: the same everywhere
    assert {taxi_day_key(f"T{k}") for k in range(1000)} == set(KEYS)  # all 64, only them
    assert len(KEYS) == TAXI_DAY_BUCKETS
