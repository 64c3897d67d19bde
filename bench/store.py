"""Store read benchmark: one district's `store.series(...)` before and after, beside bare sqlite3.

    .venv/bin/python -m bench.store                     # 3 stored districts, embedded store
    .venv/bin/python -m bench.store --districts 2 --rounds 3 --readers 2
    .venv/bin/python -m bench.store --influx            # also InfluxStore on InfluxDB 1.x

What an evaluation pass reads per district (`Evaluator._districts`): `series(ELEC_READING,
READING_FIELDS, start, end, district=d)` over the rules' 30-day window, i.e. 100 meters ×
30 days of 15-min readings ≈ 290 k rows × (ts + 4 fields).

The districts are `bench.estimate.synth_district` (100 meters + master, 30 days, 1 %
missing), written in time order across the fleet as ingest writes them, twice: into a
file of the previous layout (index (district, ts)) and into one of the current layout
(no district index; a (district, meter) list kept per batch), with the same INSERT OR
REPLACE batches of 20 000 rows, so the write cost of the two layouts is compared too. Then, per district, interleaved rounds of:

- before: the previous `series` (one query through the district index, ORDER BY meter, ts,
  then the previous per-row `group_series`) on the previous layout;
- bare before: the same SQL, `fetchall()` only, on its own sqlite3 connection;
- after: `EmbeddedStore.series` on the current layout;
- bare after: the current SQL (a primary-key range per meter), `fetchall()` only, on its
  own sqlite3 connection: the floor of any sqlite3-module read of these rows;
- sqlite only: the same per-meter ranges summed inside SQLite (no row reaches Python):
  the engine's share.

Each figure is the median over rounds and districts, wall-clock and CPU (process time; on
a shared machine the CPU figure is the one to compare). The projection multiplies by the
number of districts of a full pass (default 10 000) and adds the estimator core measured
here on the same district (`fit_district` + `meter_decision`). `--readers N` also times
reading every stored district with N processes, each with its own store (WAL readers).

`--influx` starts InfluxDB 1.x from tests/services.py, writes one district (line protocol,
ms) and times `InfluxStore.series` (1, 2 and 3 time ranges read concurrently) against the
previous `series` (one query, gzip as httpx asks by default) and against bare GETs of that
query (gzip, uncompressed, uncompressed + `json.loads`), with influxd's CPU for each.

The script prints figures; it asserts nothing on timing (it does check that before and
after return the same Series).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.estimate import DAY_MS, RULES_PATH, SynthDistrict, scratch_dir, synth_district
from monitor.core.clock import format_ts
from monitor.core.decision import Stamp
from monitor.core.ports import Series
from monitor.core.rulebook import ElecRules, load_rules
from monitor.core.schema import ELEC_READING
from monitor.electricity.evaluate import READING_FIELDS, fit_district, meter_decision
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.embedded.layout import table_columns as _columns
from monitor.store.embedded.layout import table_ddl as _ddl

BATCH = 20_000
FIELDS = list(READING_FIELDS)
COLS = _columns(ELEC_READING)
INSERT = (
    f"INSERT OR REPLACE INTO elec_reading ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})"
)

# --- the previous read path (as of commit 4e2e7a6), kept here to measure against ----------

LEGACY_SQL = (
    f"SELECT meter, ts, {', '.join(FIELDS)} FROM elec_reading WHERE ts BETWEEN ? AND ? "
    "AND district = ? ORDER BY meter, ts"
)


def legacy_group_series(rows: Sequence[Sequence[Any]], fields: Sequence[str]) -> dict[str, Series]:
    """The previous `monitor.ports.group_series`, verbatim."""
    if not rows:
        return {}
    meters = [r[0] for r in rows]
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    cols = np.array([[np.nan if v is None else v for v in r[2:]] for r in rows], dtype=np.float64)
    cols = cols.reshape(len(rows), len(fields))
    out: dict[str, Series] = {}
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or meters[i] != meters[start]:
            out[meters[start]] = Series(
                ts[start:i], {f: cols[start:i, k] for k, f in enumerate(fields)}
            )
            start = i
    return out


def legacy_series(db: sqlite3.Connection, start: int, end: int, district: str) -> dict[str, Series]:
    """The previous `EmbeddedStore.series` (district given) on a previous-layout file."""
    rows = db.execute(LEGACY_SQL, (start, end, district)).fetchall()
    return legacy_group_series(rows, FIELDS)


# --- files -------------------------------------------------------------------------------


def district_rows(d: SynthDistrict) -> list[tuple[Any, ...]]:
    """The table rows of a synthetic district, in the column order of the store."""
    out: list[tuple[Any, ...]] = []
    for meter, s in d.series.items():
        cols = {k: np.asarray(v).tolist() for k, v in s.values.items()}
        for j, ts in enumerate(s.ts_ms.tolist()):
            volts, amps = cols["voltage_v"][j], cols["current_a"][j]
            out.append(
                (
                    meter,
                    ts,
                    d.name,
                    round(cols["energy_kwh"][j], 3),
                    0.0,
                    round(volts, 1),
                    round(amps, 2),
                    round(amps * volts / 1000, 3),
                    round(cols["clock_offset_s"][j], 1),
                    j,
                )
            )
    return out


def write_file(path: Path, rows: list[tuple[Any, ...]], legacy: bool) -> tuple[float, float]:
    """Create a store file of one layout and insert the rows in batches; (wall, CPU) s.

    The current layout's batches also list their (district, meter) pairs and look up
    the last packed day, as `EmbeddedStore.write` does.
    """
    if legacy:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_ddl(ELEC_READING))
        db.execute("CREATE INDEX elec_reading_time ON elec_reading (ts)")
        db.execute("CREATE INDEX elec_reading_district ON elec_reading (district, ts)")
    else:
        EmbeddedStore(path, Metrics()).close()  # the current layout, as the store makes it
        db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # tmpfs and no fsync: the layouts, not the disk
    listing = "INSERT OR IGNORE INTO elec_reading_meters (district, meter) VALUES (?, ?)"
    t0, c0 = time.perf_counter(), time.process_time()
    for a in range(0, len(rows), BATCH):
        batch = rows[a : a + BATCH]
        db.execute("BEGIN")
        db.executemany(INSERT, batch)
        if not legacy:  # what `EmbeddedStore.write` adds: the list, the last packed day
            db.executemany(listing, sorted({(r[2], r[0]) for r in batch}))
            db.execute("SELECT day FROM elec_reading_days_upto").fetchone()
        db.execute("COMMIT")
    spent = time.perf_counter() - t0, time.process_time() - c0
    db.close()
    return spent


# --- timing ------------------------------------------------------------------------------


@dataclass
class Timing:
    """Per-read wall and CPU seconds of one contender."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, fn: Callable[..., object], *args: object) -> object:
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall.append(time.perf_counter() - w)
        self.cpu.append(time.process_time() - c)
        return out

    @property
    def wall_ms(self) -> float:
        return 1000 * statistics.median(self.wall)

    @property
    def cpu_ms(self) -> float:
        return 1000 * statistics.median(self.cpu)


def same(a: dict[str, Series], b: dict[str, Series]) -> bool:
    """Same meters, times and values (NaN = NaN)."""
    return list(a) == list(b) and all(
        np.array_equal(a[m].ts_ms, b[m].ts_ms)
        and a[m].values.keys() == b[m].values.keys()
        and all(np.array_equal(a[m].values[f], b[m].values[f], equal_nan=True) for f in a[m].values)
        for m in a
    )


def per_meter_fetch(db: sqlite3.Connection, meters: list[str], start: int, end: int, d: str) -> int:
    """Bare sqlite3: the current SQL, rows fetched, nothing converted."""
    sql = (
        f"SELECT ts, {', '.join(FIELDS)} FROM elec_reading WHERE meter = ? "
        "AND ts BETWEEN ? AND ? AND +district = ? ORDER BY ts"
    )
    return sum(len(db.execute(sql, (m, start, end, d)).fetchall()) for m in meters)


def per_meter_sum(db: sqlite3.Connection, meters: list[str], start: int, end: int, d: str) -> int:
    """Inside SQLite only: the same ranges, every column read, one row out per meter."""
    sums = ", ".join(f"total({c})" for c in ("ts", *FIELDS))
    sql = (
        f"SELECT count(*), {sums} FROM elec_reading WHERE meter = ? "
        "AND ts BETWEEN ? AND ? AND +district = ?"
    )
    return sum(db.execute(sql, (m, start, end, d)).fetchone()[0] for m in meters)


_reader: EmbeddedStore | None = None


def _open_reader(path: str) -> None:
    global _reader
    _reader = EmbeddedStore(Path(path), Metrics())


def _read_district(job: tuple[str, int, int]) -> int:
    assert _reader is not None
    got = _reader.series(ELEC_READING, READING_FIELDS, job[1], job[2], district=job[0])
    return sum(len(s.ts_ms) for s in got.values())


def parallel_reads(path: Path, jobs: list[tuple[str, int, int]], readers: int) -> float:
    """Seconds to read every job with `readers` processes (after one warm-up read each)."""
    pool = mp.get_context("spawn").Pool(readers, _open_reader, (str(path),))
    try:
        pool.map(_read_district, jobs[:readers], chunksize=1)
        t0 = time.perf_counter()
        pool.map(_read_district, jobs, chunksize=1)
        spent = time.perf_counter() - t0
        pool.close()
    finally:
        pool.join()
    return spent


# --- the embedded store ------------------------------------------------------------------


def embedded(args: argparse.Namespace, tmp: Path) -> None:
    book = load_rules(RULES_PATH)
    rules = book.rules.elec
    window = int(rules.estimation.window_days * DAY_MS)
    print(f"generating {args.districts} district(s) of 100 meters + master × 30 days ...")
    synth = [synth_district(args.seed, i) for i in range(args.districts)]
    rows = sorted(
        itertools.chain.from_iterable(district_rows(d) for d in synth), key=lambda r: r[1]
    )
    old_path, new_path = tmp / "before.sqlite", tmp / "after.sqlite"
    write_old = write_file(old_path, rows, legacy=True)
    write_new = write_file(new_path, rows, legacy=False)
    print(
        f"written {len(rows):,} rows in time order, batches of {BATCH:,} (INSERT OR REPLACE, "
        f"synchronous=OFF, {tmp}): previous layout {write_old[0]:.1f} s, CPU "
        f"{1e6 * write_old[1] / len(rows):.1f} µs/row; current layout {write_new[0]:.1f} s, "
        f"CPU {1e6 * write_new[1] / len(rows):.1f} µs/row; "
        f"{old_path.stat().st_size / 1e6:.0f} / {new_path.stat().st_size / 1e6:.0f} MB"
    )
    t0 = time.perf_counter()
    EmbeddedStore(_copy(old_path, tmp / "migrated.sqlite"), Metrics()).close()
    print(
        f"opening the previous-layout file with the current store (migration: meters of each "
        f"district listed, index (district, ts) dropped): {time.perf_counter() - t0:.1f} s"
    )

    legacy = sqlite3.connect(old_path)
    bare = sqlite3.connect(new_path, isolation_level=None)
    store = EmbeddedStore(new_path, Metrics())
    names = (
        "before",
        "bare before",
        "after: packs",
        "after: +1 day",
        "after",
        "bare after",
        "sqlite only",
    )
    timings = {n: Timing() for n in names}
    core = Timing()
    per_district = 0
    jobs = []
    unpack = (
        "DELETE FROM elec_reading_days WHERE meter IN "
        "(SELECT meter FROM elec_reading_meters WHERE district = ?) AND day >= ?"
    )
    for d in synth:
        start, end = d.end_ms - window, d.end_ms
        jobs.append((d.name, start, end))
        meters = store.meters(ELEC_READING, d.name)
        a = legacy_series(legacy, start, end, d.name)
        b = store.series(ELEC_READING, READING_FIELDS, start, end, district=d.name)
        if not same(a, b) or not same(a, store.series(ELEC_READING, FIELDS, start, end, d.name)):
            raise SystemExit(f"{d.name}: before and after differ")
        per_district = sum(len(s.ts_ms) for s in b.values())
        last_day = (end + 1) // DAY_MS - 1
        args_read = (ELEC_READING, READING_FIELDS, start, end, d.name)
        contenders: list[tuple[str, tuple[object, ...] | None, Callable[..., object], Any]] = [
            ("before", None, legacy_series, (legacy, start, end, d.name)),
            ("bare before", None, _fetchall, (legacy, LEGACY_SQL, (start, end, d.name))),
            ("after: packs", (d.name, 0), store.series, args_read),
            ("after: +1 day", (d.name, last_day), store.series, args_read),
            ("after", None, store.series, args_read),
            ("bare after", None, per_meter_fetch, (bare, meters, start, end, d.name)),
            ("sqlite only", None, per_meter_sum, (bare, meters, start, end, d.name)),
        ]
        for _ in range(args.rounds):
            for name, drop, fn, fn_args in contenders:
                if drop is not None:
                    bare.execute(unpack, drop)
                timings[name].add(fn, *fn_args)
        stamp = Stamp(format_ts(end), book.version)
        dist_args = (d, b, stamp)
        evaluate(rules, window, *dist_args)  # warm
        for _ in range(max(1, args.rounds // 2)):
            core.add(evaluate, rules, window, *dist_args)
    legacy.close()
    bare.close()
    store.close()
    size_mb = new_path.stat().st_size / 1e6

    n = args.pass_districts
    print()
    print(
        f"one district = {per_district:,} rows (ts + {len(FIELDS)} fields); median of "
        f"{args.rounds} rounds × {args.districts} district(s), interleaved"
    )
    print(f"{'contender':<14} {'wall ms':>8} {'cpu ms':>8}  {f'{n:,} districts (cpu)':>22}")
    for name in names:
        t = timings[name]
        total = t.cpu_ms * n / 1000
        print(f"{name:<14} {t.wall_ms:>8.0f} {t.cpu_ms:>8.0f}  {_hours(total):>22}")
    before, after = timings["before"], timings["after"]
    bare_ms = timings["bare after"].cpu_ms
    print(
        f"store.series, CPU per district: {before.cpu_ms:.0f} ms before → "
        f"{timings['after: packs'].cpu_ms:.0f} ms reading and packing 30 days, "
        f"{timings['after: +1 day'].cpu_ms:.0f} ms packing one new day, "
        f"{after.cpu_ms:.0f} ms with every day packed ({before.cpu_ms / after.cpu_ms:.0f}× "
        f"before; {after.cpu_ms / bare_ms:.2f}× a bare sqlite3 fetchall of the same rows, "
        f"{bare_ms:.0f} ms, of which SQLite itself {timings['sqlite only'].cpu_ms:.0f} ms)"
    )
    print(
        f"current-layout file with the window's days packed: {size_mb:.0f} MB (the blocks "
        f"hold ts + the {len(FIELDS)} fields read, 40 bytes a point)"
    )
    print(
        f"estimator core on the same district (fit_district + meter_decision): "
        f"{core.cpu_ms:.0f} ms CPU, {core.wall_ms:.0f} ms wall"
    )
    for label, key in (
        ("before", "before"),
        ("after, first pass (packs every day)", "after: packs"),
        ("after, next day's pass (packs one day)", "after: +1 day"),
        ("after, all days packed", "after"),
    ):
        read = timings[key].cpu_ms
        total = (read + core.cpu_ms) * n / 1000
        print(
            f"full pass over {n:,} districts, one process, {label}: reads "
            f"{_hours(read * n / 1000)} + core {_hours(core.cpu_ms * n / 1000)} = "
            f"{_hours(total)} (reads {100 * read / (read + core.cpu_ms):.0f} %)"
        )
    if args.readers > 1:
        jobs = jobs * max(1, (4 * args.readers) // len(jobs))
        one = parallel_reads(new_path, jobs, 1)
        many = parallel_reads(new_path, jobs, args.readers)
        print(
            f"reading {len(jobs)} districts in reader processes (each its own store, WAL; "
            "wall clock, compare with the wall column above): "
            f"1 process {1000 * one / len(jobs):.0f} ms/district, {args.readers} processes "
            f"{1000 * many / len(jobs):.0f} ms/district wall ({one / many:.2f}× on "
            f"{os.cpu_count()} CPUs) → {_hours(many / len(jobs) * n)} for {n:,} districts"
        )


def _fetchall(db: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[Any]:
    return db.execute(sql, args).fetchall()


def evaluate(
    rules: ElecRules,
    window: int,
    d: SynthDistrict,
    series: dict[str, Series],
    stamp: Stamp,
) -> object:
    """The estimator core on one district: fit, then every meter's decision."""
    dist = fit_district(d.name, series, d.master, rules, d.end_ms - window, d.end_ms)
    return [meter_decision(m, d.rows.get(m), dist, [], rules, stamp, None) for m in series]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


# --- InfluxDB ----------------------------------------------------------------------------


def influx(args: argparse.Namespace, tmp: Path) -> None:
    import json

    import httpx

    from monitor.core.schema import Record
    from monitor.platform.config import InfluxSettings
    from monitor.store.influx import InfluxStore, quote_ident, quote_literal, series_from_response
    from monitor.store.lineproto import to_lines
    from tests.services import InfluxDB1

    server = InfluxDB1(tmp / "influxdb")
    server.start()
    store: InfluxStore | None = None
    try:
        server.create_database("meters")
        d = synth_district(args.seed, 0)
        records = [
            Record(ELEC_READING, meter, d.name, int(ts), {f: float(s.values[f][j]) for f in FIELDS})
            for meter, s in d.series.items()
            for j, ts in enumerate(s.ts_ms.tolist())
        ]
        t0 = time.perf_counter()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            lines = to_lines(records)
            for a in range(0, len(lines), 50_000):
                http.post(
                    "/write",
                    params={"db": "meters", "precision": "ms"},
                    content="\n".join(lines[a : a + 50_000]).encode(),
                ).raise_for_status()
        print(f"InfluxDB 1.x: {len(records):,} points written in {time.perf_counter() - t0:.1f} s")
        settings = InfluxSettings(url=server.url, bucket="meters/autogen", timeout_s=120)
        store = InfluxStore(settings, tmp / "spool", Metrics())
        start, end = d.end_ms - 30 * DAY_MS, d.end_ms
        q = (
            f"SELECT {', '.join(quote_ident(f) for f in FIELDS)} FROM elec_reading "
            f"WHERE time >= {start}ms AND time <= {end}ms AND "
            f"{quote_ident('district')} = {quote_literal(d.name)} GROUP BY {quote_ident('meter')}"
        )
        params = {"db": "meters", "q": q, "epoch": "ms"}
        plain = {"Accept-Encoding": "identity"}
        proc = server._proc.proc
        assert proc is not None
        pid = proc.pid

        def server_cpu() -> float:
            # utime + stime of influxd (fields 14 and 15 of /proc/PID/stat)
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

        def before() -> dict[str, Series]:
            # the previous `series`: one query, httpx's default Accept-Encoding (gzip)
            assert store is not None
            return series_from_response(store._get(q), FIELDS)

        def after(parts: int) -> Callable[[], dict[str, Series]]:
            def read() -> dict[str, Series]:
                assert store is not None
                store.series_parts = parts
                return store.series(ELEC_READING, READING_FIELDS, start, end, district=d.name)

            return read

        http2 = httpx.Client(base_url=server.url, timeout=120)
        contenders: dict[str, Callable[[], object]] = {
            "bare GET gzip": lambda: http2.get("/query", params=params).content,
            "bare GET": lambda: http2.get("/query", params=params, headers=plain).content,
            "bare GET+json": lambda: json.loads(
                http2.get("/query", params=params, headers=plain).content
            ),
            "before": before,
            "after, 1 part": after(1),
            "after, 2 parts": after(2),
            "after, 3 parts": after(3),
        }
        got_before = before()
        for parts in (1, 2, 3):
            if not same(got_before, after(parts)()):
                raise SystemExit(f"InfluxStore: before and after ({parts} parts) differ")
        timings = {n: Timing() for n in contenders}
        served: dict[str, list[float]] = {n: [] for n in contenders}
        sizes = {  # bytes on the wire
            "gzip": http2.get("/query", params=params).num_bytes_downloaded,
            "plain": http2.get("/query", params=params, headers=plain).num_bytes_downloaded,
        }
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                s0 = server_cpu()
                timings[name].add(fn)
                served[name].append(server_cpu() - s0)
        http2.close()
        n_rows = sum(len(s.ts_ms) for s in got_before.values())
        n = args.pass_districts
        print(
            f"InfluxStore.series, one district ({n_rows:,} rows, answer {sizes['plain'] / 1e6:.1f} "
            f"MB of JSON, {sizes['gzip'] / 1e6:.1f} MB gzipped), median of {args.rounds} rounds, "
            f"load {os.getloadavg()[0]:.2f}:"
        )
        print(
            f"{'contender':<15} {'wall ms':>8} {'client cpu':>11} {'influxd cpu':>12}  "
            f"{f'{n:,} districts (wall)':>22}"
        )
        for name, t in timings.items():
            print(
                f"{name:<15} {t.wall_ms:>8.0f} {t.cpu_ms:>11.0f} "
                f"{1000 * statistics.median(served[name]):>12.0f}  "
                f"{_hours(t.wall_ms * n / 1000):>22}"
            )
        print(
            f"(bare: httpx GET of the one query `before` sends, bytes only, then + json.loads; "
            f"{os.cpu_count()} CPUs shared by influxd and this process)"
        )
    finally:
        if store is not None:
            store.close()
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--districts", type=int, default=3, help="districts stored (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="reads per contender and district")
    parser.add_argument("--pass-districts", type=int, default=10_000, help="projected pass size")
    parser.add_argument("--readers", type=int, default=0, help="also time N reader processes")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--influx", action="store_true", help="also InfluxStore on InfluxDB 1.x")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args(argv)
    print(
        f"bench.store — Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    tmp = scratch_dir("bench-store-")
    try:
        if not args.skip_embedded:
            embedded(args, tmp)
        if args.influx:
            print()
            influx(args, Path(tempfile.mkdtemp(prefix="bench-store-influx-", dir=tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
