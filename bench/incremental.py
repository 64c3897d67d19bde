"""Incremental passes (issue 16): day summaries against the full-read pass, same run, same data.

    .venv/bin/python -m bench.incremental                          # embedded, 40 districts
    .venv/bin/python -m bench.incremental --districts 100 --influx-districts 8

N synthetic districts (bench.estimate.synth_district: 100 households and a master,
15-minute registers, 1 % of readings missing) with `--days` of history are written
once per store (the history straight into the file or InfluxDB's /write; what ingest
writes later goes through the store, which marks the days in the state). Then, per
store, each pass beside the full-read pass in the same run:

1. the first pass with day summaries (reads everything, keeps every complete day);
2. the daily pass after one new day was written (as_of one day later);
3. the pass after late readings touched `--late` (1 %) of the district-days.

Each pass is timed as read (the district's Series: `load_district`, or
`load_district_days` with the summaries) and core (fit_district and every meter's
decision); the Series of both are compared (they must be identical). Figures per
district and projected to 10 000 and 130 000 districts on one process; the stored
summaries' size per district-day and for a province. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.estimate import BASE_MS, DAY_MS, RULES_PATH, SynthDistrict, scratch_dir, synth_district
from bench.store import COLS, INSERT, district_rows, same
from monitor.core.clock import format_ts
from monitor.core.decision import Stamp
from monitor.core.ports import Series, TelemetryStore
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import ELEC_READING, Record
from monitor.electricity.days import load_district_days
from monitor.electricity.evaluate import READING_FIELDS, fit_district, load_district, meter_decision
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState

FIELDS = list(READING_FIELDS)
PROVINCE = 130_000


@dataclass
class PassTime:
    """Seconds spent reading and in the core over one pass, and what was read."""

    read_s: float = 0.0
    core_s: float = 0.0
    read_cpu_s: float = 0.0  # this process's CPU (InfluxDB's own is not in it)
    core_cpu_s: float = 0.0
    districts: int = 0
    days_read: int = 0
    days_kept: int = 0

    def per_district_ms(self) -> tuple[float, float]:
        n = max(self.districts, 1)
        return 1000 * self.read_s / n, 1000 * self.core_s / n


@dataclass
class Fleet:
    """The synthetic districts: regenerated from (seed, index) whenever needed."""

    seed: int
    n: int
    meters: int
    days: int

    made: dict[int, SynthDistrict] = field(default_factory=dict)

    def district(self, i: int) -> SynthDistrict:
        # One day more than the history: the new day of the daily pass. Kept (~25 MB a
        # district): made once, outside any timing.
        if i not in self.made:
            self.made[i] = synth_district(self.seed, i, self.meters, self.days + 1)
        return self.made[i]

    @property
    def history_end(self) -> int:
        return BASE_MS + self.days * DAY_MS


@dataclass
class Report:
    rows: list[tuple[str, PassTime]] = field(default_factory=list)

    def add(self, name: str, t: PassTime) -> None:
        self.rows.append((name, t))
        read, core = t.per_district_ms()
        n = max(t.districts, 1)
        total = (t.read_s + t.core_s) / n
        print(
            f"  {name:<42} read {read:7.0f} ms (cpu {1000 * t.read_cpu_s / n:5.0f})  "
            f"core {core:6.0f} ms (cpu {1000 * t.core_cpu_s / n:5.0f})  per district "
            f"{1000 * total:7.0f} ms  → 10 000: {_span(total * 10_000):>8}  "
            f"130 000: {_span(total * PROVINCE):>8}  (days read {t.days_read}, kept {t.days_kept})",
            flush=True,
        )


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def rules_for(window_days: int) -> RuleBook:
    book = load_rules(RULES_PATH)
    est = book.rules.elec.estimation.model_copy(update={"window_days": float(window_days)})
    elec = book.rules.elec.model_copy(update={"estimation": est})
    return replace(book, rules=book.rules.model_copy(update={"elec": elec}))


def core(book: RuleBook, d: SynthDistrict, series: dict[str, Series], start: int, end: int) -> None:
    rules = book.rules.elec
    stamp = Stamp(format_ts(end), book.version)
    dist = fit_district(d.name, series, d.master, rules, start, end)
    for m in series:
        meter_decision(m, d.rows.get(m), dist, [], rules, stamp, None)


def a_pass(
    fleet: Fleet,
    book: RuleBook,
    store: TelemetryStore,
    state: SqliteState | None,
    as_of: int,
    check: dict[str, dict[str, Series]] | None = None,
    keep: dict[str, dict[str, Series]] | None = None,
) -> PassTime:
    """One pass over the fleet: full reads (state None) or from day summaries."""
    start = as_of - fleet.days * DAY_MS
    upto = state.mark_sequence() if state is not None else 0
    t = PassTime()
    for i in range(fleet.n):
        d = fleet.district(i)
        t0, c0 = time.perf_counter(), time.process_time()
        if state is None:
            series = load_district(store, d.name, start, as_of)
        else:
            series, got = load_district_days(store, state, d.name, start, as_of, upto, FIELDS)
            t.days_read += got.read_days
            t.days_kept += got.kept
        t1, c1 = time.perf_counter(), time.process_time()
        core(book, d, series, start, as_of)
        t.read_s += t1 - t0
        t.core_s += time.perf_counter() - t1
        t.read_cpu_s += c1 - c0
        t.core_cpu_s += time.process_time() - c1
        t.districts += 1
        if check is not None and not same(series, check[d.name]):
            raise SystemExit(f"{d.name}: the Series from day summaries differ from a full read")
        if keep is not None:
            keep[d.name] = series
    return t


def rows(d: SynthDistrict, lo: int, hi: int) -> list[tuple[Any, ...]]:
    """The district's store rows with lo <= ts < hi (values as meters report them:
    `bench.store.district_rows`)."""
    return [r for r in district_rows(d) if lo <= r[1] < hi]


def records(d: SynthDistrict, lo: int, hi: int) -> list[Record]:
    """The same readings as ingest would write them: the same values on either store."""
    out = []
    for row in rows(d, lo, hi):
        named = dict(zip(COLS, row, strict=True))
        values: dict[str, float | int | str] = {
            k: v for k, v in named.items() if k not in ("meter", "ts", "district")
        }
        out.append(Record(ELEC_READING, row[0], d.name, int(row[1]), values))
    return out


def late_touches(fleet: Fleet, share: float, seed: int) -> list[tuple[int, int]]:
    """(district, day of the history) pairs a late reading lands in: `share` of them."""
    rng = random.Random(seed)
    pairs = [(i, day) for i in range(fleet.n) for day in range(1, fleet.days)]
    return sorted(rng.sample(pairs, max(1, round(share * len(pairs)))))


def late_records(fleet: Fleet, touches: list[tuple[int, int]]) -> list[Record]:
    """One meter's reading re-sent late, its register changed, into each touched day."""
    out = []
    for i in sorted({i for i, _ in touches}):
        d = fleet.district(i)
        every = {(r.meter, r.ts_ms): r for r in records(d, 0, fleet.history_end)}
        for day in [day for k, day in touches if k == i]:
            meter = sorted(d.series)[day % len(d.series)]
            s = d.series[meter]
            j = int(np.searchsorted(s.ts_ms, BASE_MS + day * DAY_MS + DAY_MS // 2))
            out.append(_changed(every[(meter, int(s.ts_ms[j]))]))
    return out


def _changed(again: Record) -> Record:
    """The reading again, its register 1 Wh higher."""
    values = dict(again.values)
    values["energy_kwh"] = float(values["energy_kwh"]) + 0.001
    return Record(ELEC_READING, again.meter, again.district, again.ts_ms, values)


def scenario(
    label: str,
    fleet: Fleet,
    store: TelemetryStore,
    state: SqliteState,
    state_path: Path,
    late_share: float,
    report: Report,
) -> None:
    """The three passes beside the full-read pass, on one store."""
    book = rules_for(fleet.days)
    as_of = fleet.history_end
    print(f"{label}: {fleet.n} districts × {fleet.meters} meters × {fleet.days} days", flush=True)
    full: dict[str, dict[str, Series]] = {}
    first = " (packs day blocks)" if label == "embedded" else ""
    report.add(
        f"{label} full read, first{first}", a_pass(fleet, book, store, None, as_of, keep=full)
    )
    report.add(f"{label} full read", a_pass(fleet, book, store, None, as_of))
    report.add(f"{label} summaries, first pass", a_pass(fleet, book, store, state, as_of, full))
    report.add(f"{label} summaries, nothing new", a_pass(fleet, book, store, state, as_of, full))
    # One new day, written as ingest writes it (the store marks its days).
    for i in range(fleet.n):
        store.write(records(fleet.district(i), as_of, as_of + DAY_MS))
    assert store.flush(600)
    as_of += DAY_MS
    full.clear()
    report.add(f"{label} full read, new day", a_pass(fleet, book, store, None, as_of, keep=full))
    report.add(f"{label} summaries, new day", a_pass(fleet, book, store, state, as_of, full))
    touches = late_touches(fleet, late_share, fleet.seed)
    store.write(late_records(fleet, touches))
    assert store.flush(600)
    full.clear()
    name = f"{label} full read, late {100 * late_share:g} %"
    report.add(name, a_pass(fleet, book, store, None, as_of, keep=full))
    name = f"{label} summaries, late {100 * late_share:g} % ({len(touches)} days)"
    report.add(name, a_pass(fleet, book, store, state, as_of, full))
    with sqlite3.connect(state_path) as db:
        sizes = [int(n) for (n,) in db.execute("SELECT length(body) FROM day_summaries")]
    per_day = statistics.mean(sizes)
    print(
        f"  day summaries: {len(sizes)} district-days, mean {per_day / 1024:.0f} KiB "
        f"(min {min(sizes) / 1024:.0f}, max {max(sizes) / 1024:.0f}); a province "
        f"({PROVINCE:,} districts × {fleet.days} days): {per_day * PROVINCE * fleet.days / 1e12:.2f} TB",
        flush=True,
    )


def write_embedded(path: Path, fleet: Fleet) -> float:
    """The history straight into a store file (no marks needed: nothing is summarised yet)."""
    EmbeddedStore(path, Metrics()).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    listing = "INSERT OR IGNORE INTO elec_reading_meters (district, meter) VALUES (?, ?)"
    t0 = time.perf_counter()
    for i in range(fleet.n):
        d = fleet.district(i)
        db.execute("BEGIN")
        db.executemany(INSERT, rows(d, 0, fleet.history_end))
        db.executemany(listing, sorted({(d.name, m) for m in d.series}))
        db.execute("COMMIT")
    db.close()
    return time.perf_counter() - t0


def embedded(fleet: Fleet, workdir: Path, late: float, report: Report) -> None:
    path = workdir / "telemetry.sqlite"
    print(f"embedded: history written in {write_embedded(path, fleet):.0f} s", flush=True)
    state = SqliteState(workdir / "state.sqlite")
    store = EmbeddedStore(path, Metrics(), synchronous="OFF", marks=state)
    try:
        scenario("embedded", fleet, store, state, workdir / "state.sqlite", late, report)
    finally:
        store.close()
        state.close()


@contextmanager
def influx_server(workdir: Path) -> Iterator[tuple[str, str]]:
    """InfluxDB 1.x and the v2 write adapter in front of it (the InfluxStore's API):
    (server URL, adapter URL)."""
    from tests.services import InfluxDB1, InfluxV2Adapter

    server = InfluxDB1(workdir / "influxdb")
    server.start()
    adapter = InfluxV2Adapter(server.url)
    try:
        server.create_database("meters")
        adapter.start()
        yield server.url, adapter.url
    finally:
        adapter.stop()
        server.stop()


def influx(fleet: Fleet, workdir: Path, late: float, report: Report) -> None:
    import httpx

    from monitor.platform.config import InfluxSettings
    from monitor.store.influx import InfluxStore
    from monitor.store.lineproto import to_lines

    with influx_server(workdir) as (url, v2):
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, timeout=300) as http:
            for i in range(fleet.n):
                lines = to_lines(records(fleet.district(i), 0, fleet.history_end))
                for a in range(0, len(lines), 50_000):
                    http.post(
                        "/write",
                        params={"db": "meters", "precision": "ms"},
                        content="\n".join(lines[a : a + 50_000]).encode(),
                    ).raise_for_status()
        print(f"influxdb: history written in {time.perf_counter() - t0:.0f} s", flush=True)
        state = SqliteState(workdir / "influx-state.sqlite")
        settings = InfluxSettings(
            url=v2, token="bench", org="monitor", bucket="meters/autogen", timeout_s=300
        )
        store = InfluxStore(settings, workdir / "spool", Metrics(), state)
        try:
            scenario("influxdb", fleet, store, state, workdir / "influx-state.sqlite", late, report)
        finally:
            store.close()
            state.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.incremental", description=__doc__.split("\n")[0]
    )
    p.add_argument("--districts", type=int, default=40, help="districts on the embedded store")
    p.add_argument(
        "--influx-districts", type=int, default=0, help="districts on InfluxDB (0: skip it)"
    )
    p.add_argument("--meters", type=int, default=100)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--late", type=float, default=0.01, help="share of district-days touched late")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"bench.incremental: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    report = Report()
    workdir = scratch_dir("bench-incremental-")
    runs: list[Callable[[], None]] = []
    if args.districts:
        fleet = Fleet(args.seed, args.districts, args.meters, args.days)
        runs.append(lambda: embedded(fleet, workdir, args.late, report))
    if args.influx_districts:
        small = Fleet(args.seed, args.influx_districts, args.meters, args.days)
        runs.append(lambda: influx(small, workdir, args.late, report))
    try:
        for run in runs:
            run()
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
