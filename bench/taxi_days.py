"""Incremental taxi passes (issue 16, item 3): the taxi half from day summaries beside the
full read, same run, same data.

    .venv/bin/python -m bench.taxi_days                         # 200 taxis embedded, 50 on InfluxDB
    .venv/bin/python -m bench.taxi_days --taxis 60 --days 20 --influx-taxis 0
    .venv/bin/python -m bench.taxi_days --taxis 0 --influx-taxis 200  # InfluxDB only

A simulated taxi fleet (`monitor.simulate`, as `bench.taxi` drives it: 288 heartbeats a
taxi a day, 15-25 trips, events, late and duplicate deliveries) is parsed as ingest
parses it (`parse_message`) and written through the store (`store.write`, which marks the
(taxi key, day)s in the state) for `--days` and ten hours. Then, per store, the taxi
half's read (`taxi.evaluate.load`, what differs) beside the full read in the same run:

1. the full read, the first time (the embedded store packs its heartbeat day blocks) and
   again;
2. the first pass with day summaries (reads every day, keeps every complete one), and one
   with nothing new;
3. after one new day was written (as_of one day later): the full read and the daily pass;
4. after late trips of 1 % of the taxis (one each, re-sent with a changed fare into a day
   weeks back): the full read and the pass.

Each pass with summaries must load exactly what the full read beside it loads (`TaxiData`
equal; checked, a difference stops the run); the rules' decisions over it are then the
same, and cost the same either way (bench.taxi times them). Also the summaries' size per
taxi-day. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from bench.taxi import BASE_MS, DAY_MS, HOUR_MS, RULES_PATH, TARIFFS_PATH, WRITE_BATCH
from monitor.core.ports import TelemetryStore
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import TAXI_TRIP, Record
from monitor.ingest.telemetry import parse_message
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from monitor.taxi import evaluate as evaluate_taxi
from monitor.taxi.tariff import load_tariffs

# The partial last day of the history: the pass's as_of is ten hours into it.
TAIL_MS = 10 * HOUR_MS


class History:
    """The simulated fleet's records, day after day (the simulator only moves forward)."""

    def __init__(self, taxis: int, seed: int) -> None:
        spec = FleetSpec(start_ms=BASE_MS, seed=seed, districts=0, taxis=taxis)
        self.fleet = Fleet(spec, load_tariffs(TARIFFS_PATH))
        self.meters = sorted(r["meter_id"] for r in self.fleet.registry_rows())
        self.trips: list[Record] = []  # every trip written, for late copies

    def records(self, start_ms: int, end_ms: int) -> Iterator[list[Record]]:
        """What the fleet publishes in [start, end), parsed, in batches of WRITE_BATCH."""
        batch: list[Record] = []
        for message in self.fleet.messages(start_ms, end_ms):
            parsed = parse_message(message.topic, message.payload)
            if isinstance(parsed, Record):
                batch.append(parsed)
                if parsed.measurement.name == TAXI_TRIP.name:
                    self.trips.append(parsed)
                if len(batch) >= WRITE_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch


def write(store: TelemetryStore, history: History, start_ms: int, end_ms: int) -> int:
    """The fleet's records of [start, end) through the store; how many."""
    n = 0
    for batch in history.records(start_ms, end_ms):
        store.write(batch)
        n += len(batch)
    assert store.flush(1800)
    return n


def late_trips(history: History, share: float, as_of_ms: int) -> list[Record]:
    """One trip each of `share` of the taxis, from about three weeks back, re-sent with a
    fare 1 CNY higher (a changed duplicate: its day must be read again)."""
    taxis = history.meters[:: max(1, round(1 / share))][
        : max(1, math.ceil(share * len(history.meters)))
    ]
    back = as_of_ms - 21 * DAY_MS
    out = []
    for meter in taxis:
        old = min(
            (t for t in history.trips if t.meter == meter and t.ts_ms >= back),
            key=lambda t: t.ts_ms,
        )
        values = dict(old.values)
        values["fare_cny"] = float(values["fare_cny"]) + 1.0
        out.append(replace(old, values=values))
    return out


def rules_for(days: int) -> RuleBook:
    """The shipped rules, the taxi window as long as the history."""
    book = load_rules(RULES_PATH)
    distance = book.rules.taxi.distance.model_copy(update={"window_days": float(days)})
    taxi = book.rules.taxi.model_copy(update={"distance": distance})
    return replace(book, rules=book.rules.model_copy(update={"taxi": taxi}))


class Figures:
    """Timed passes, printed as they come and in a table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def timed(
        self, name: str, load: Callable[[], evaluate_taxi.TaxiData], note: str = ""
    ) -> evaluate_taxi.TaxiData:
        t0 = time.perf_counter()
        data = load()
        seconds = time.perf_counter() - t0
        self.rows.append((name, seconds, note))
        print(f"  {name:<44} {seconds:8.2f} s  {note}", flush=True)
        return data

    def table(self) -> None:
        print()
        print(f"{'pass (taxi half: the read)':<56} {'s':>8}")
        for name, seconds, note in self.rows:
            print(f"{name:<56} {seconds:8.2f}  {note}")


def scenario(
    label: str,
    store: TelemetryStore,
    state: SqliteState,
    state_path: Path,
    history: History,
    days: int,
    late_share: float,
    figures: Figures,
) -> None:
    """The passes beside the full read on one store (module doc)."""
    book = rules_for(days)
    rules = book.rules.taxi
    meters = history.meters
    t0 = time.perf_counter()
    n = write(store, history, BASE_MS, BASE_MS + days * DAY_MS + TAIL_MS)
    print(
        f"{label}: {len(meters)} taxis × {days} days: {n} records written through the store "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    as_of = BASE_MS + days * DAY_MS + TAIL_MS - 1

    def full(at: int) -> Callable[[], evaluate_taxi.TaxiData]:
        start = evaluate_taxi.window_start(at, rules)
        return lambda: evaluate_taxi.load(store, state, start, at, meters)

    def summarised(at: int) -> Callable[[], evaluate_taxi.TaxiData]:
        start = evaluate_taxi.window_start(at, rules)
        return lambda: evaluate_taxi.load(store, state, start, at, meters, summaries=state)

    def both(what: str, at: int) -> evaluate_taxi.TaxiData:
        expected = figures.timed(f"{label} full read, {what}", full(at))
        got = figures.timed(f"{label} summaries, {what}", summarised(at))
        if got != expected:
            raise SystemExit(f"{label}, {what}: the summaries load other data than a full read")
        return got

    first = " (packs day blocks)" if label == "embedded" else ""
    expected = figures.timed(f"{label} full read, first{first}", full(as_of))
    figures.timed(f"{label} full read", full(as_of))
    got = figures.timed(f"{label} summaries, first pass", summarised(as_of))
    assert got == expected, "the first pass from summaries loads other data"
    both("nothing new", as_of)
    write(store, history, as_of + 1, as_of + 1 + DAY_MS)
    as_of += DAY_MS
    both("new day", as_of)
    late = late_trips(history, late_share, as_of)
    store.write(late)
    assert store.flush(600)
    both(f"late trips of {len(late)} taxis", as_of)
    with sqlite3.connect(state_path) as db:
        rows = db.execute(
            "SELECT count(*), sum(length(body)) FROM day_summaries "
            "WHERE substr(district, 1, 5) = 'taxi/'"
        ).fetchone()
    kept, size = int(rows[0]), int(rows[1] or 0)
    taxi_days = len(meters) * (kept // 64 if kept else 0)
    print(
        f"  {label} summaries: {kept} (bucket, day)s, {size / 1e6:.1f} MB, "
        f"{size / max(taxi_days, 1):.0f} B per taxi-day",
        flush=True,
    )


@contextmanager
def influx_store(workdir: Path, state: SqliteState) -> Iterator[TelemetryStore]:
    """InfluxDB 1.x behind the v2 write adapter (the InfluxStore's API), marking `state`."""
    from bench.incremental import influx_server
    from monitor.platform.config import InfluxSettings
    from monitor.store.influx import InfluxStore

    with influx_server(workdir) as (_url, v2):
        settings = InfluxSettings(
            url=v2, token="bench", org="monitor", bucket="meters/autogen", timeout_s=300
        )
        store = InfluxStore(settings, workdir / "spool", Metrics(), state)
        try:
            yield store
        finally:
            store.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--taxis", type=int, default=200, help="taxis on the embedded store (0: skip it)"
    )
    p.add_argument("--influx-taxis", type=int, default=50, help="taxis on InfluxDB (0: skip)")
    p.add_argument("--days", type=int, default=60, help="days of history (the taxi window)")
    p.add_argument("--late", type=float, default=0.01, help="share of taxis with a late trip")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from bench.estimate import scratch_dir

    workdir = args.workdir or scratch_dir("bench-taxi-days")
    print(
        f"bench.taxi_days: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    figures = Figures()
    if args.taxis:
        path = workdir / "embedded"
        path.mkdir(parents=True, exist_ok=True)
        state = SqliteState(path / "state.sqlite")
        store = EmbeddedStore(path / "telemetry.sqlite", Metrics(), synchronous="OFF", marks=state)
        history = History(args.taxis, args.seed)
        try:
            scenario(
                "embedded",
                store,
                state,
                path / "state.sqlite",
                history,
                args.days,
                args.late,
                figures,
            )
        finally:
            store.close()
            state.close()
    if args.influx_taxis:
        path = workdir / "influx"
        path.mkdir(parents=True, exist_ok=True)
        state = SqliteState(path / "state.sqlite")
        try:
            with influx_store(path, state) as influx:
                scenario(
                    "influxdb",
                    influx,
                    state,
                    path / "state.sqlite",
                    History(args.influx_taxis, args.seed),
                    args.days,
                    args.late,
                    figures,
                )
        finally:
            state.close()
    figures.table()
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
