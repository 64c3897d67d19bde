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
import hashlib
import itertools
import os
import platform
import random
import resource
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
from bench.store import COLS, INSERT, district_rows
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
    cores: int = 0  # districts whose core ran (`--core-districts`)
    peak_mb: float | None = None  # this process's peak resident memory during the pass

    def per_district_ms(self) -> tuple[float, float]:
        return 1000 * self.read_s / max(self.districts, 1), 1000 * self.core_s / max(self.cores, 1)


@dataclass
class Fleet:
    """The synthetic districts: regenerated from (seed, index) whenever needed."""

    seed: int
    n: int
    meters: int
    days: int

    kept: dict[int, SynthDistrict] = field(default_factory=dict)

    def district(self, i: int) -> SynthDistrict:
        """District i with its readings (~25 MB): made again each time (~0.3 s, outside any
        timing), so that memory does not grow with the fleet. One day more than the
        history: the new day of the daily pass."""
        return synth_district(self.seed, i, self.meters, self.days + 1)

    def meta(self, i: int) -> SynthDistrict:
        """District i without its readings (name, master, registry rows): what a pass
        needs beside the store; kept (a few kB a district)."""
        if i not in self.kept:
            self.kept[i] = replace(self.district(i), series={})
        return self.kept[i]

    @property
    def history_end(self) -> int:
        return BASE_MS + self.days * DAY_MS


@dataclass
class Report:
    rows: list[tuple[str, PassTime]] = field(default_factory=list)

    def add(self, name: str, t: PassTime) -> None:
        self.rows.append((name, t))
        read, core = t.per_district_ms()
        n, c = max(t.districts, 1), max(t.cores, 1)
        total = (read + core) / 1000
        print(
            f"  {name:<42} {t.districts:4d} × read {read:7.0f} ms (cpu {1000 * t.read_cpu_s / n:5.0f})  "
            f"{t.cores:4d} × core {core:6.0f} ms (cpu {1000 * t.core_cpu_s / c:5.0f})  per district "
            f"{1000 * total:7.0f} ms  → 10 000: {_span(total * 10_000):>8}  "
            f"130 000: {_span(total * PROVINCE):>8}  (days read {t.days_read}, kept {t.days_kept}; "
            f"pass peak RSS {_mb(t.peak_mb)})",
            flush=True,
        )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak of this process's resident memory (Linux: clear_refs 5 resets
    VmHWM), so that a pass's own peak is not the history's writing; False elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def pass_peak_mb() -> float | None:
    """VmHWM since `reset_peak` (None where /proc/self/status does not say it)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _mb(mb: float | None) -> str:
    return "?" if mb is None else f"{mb:.0f} MB"


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
    check: dict[str, bytes] | None = None,
    keep: dict[str, bytes] | None = None,
    districts: int | None = None,
    cores: int | None = None,
) -> PassTime:
    """One pass over the fleet (its first `districts`): full reads (state None) or from
    day summaries, the core on the first `cores` districts. `keep` gets a digest of each
    district's Series, `check` has those the Series must have (a digest: the Series of
    hundreds of districts would not fit in memory; a pass streams districts)."""
    start = as_of - fleet.days * DAY_MS
    upto = state.mark_sequence() if state is not None else 0
    t = PassTime()
    counted = reset_peak()
    for i in range(fleet.n if districts is None else min(districts, fleet.n)):
        d = fleet.meta(i)
        t0, c0 = time.perf_counter(), time.process_time()
        if state is None:
            series = load_district(store, d.name, start, as_of)
        else:
            series, got = load_district_days(store, state, d.name, start, as_of, upto, FIELDS)
            t.days_read += got.read_days
            t.days_kept += got.kept
        t1, c1 = time.perf_counter(), time.process_time()
        t.read_s += t1 - t0
        t.read_cpu_s += c1 - c0
        t.districts += 1
        if cores is None or i < cores:
            core(book, d, series, start, as_of)
            t.core_s += time.perf_counter() - t1
            t.core_cpu_s += time.process_time() - c1
            t.cores += 1
        if check is not None and d.name in check and digest(series) != check[d.name]:
            raise SystemExit(f"{d.name}: the Series from day summaries differ from a full read")
        if keep is not None:
            keep[d.name] = digest(series)
    t.peak_mb = pass_peak_mb() if counted else None
    return t


def digest(series: dict[str, Series]) -> bytes:
    """A district's Series to the bit (meters, times, fields, values)."""
    h = hashlib.blake2b(digest_size=32)
    for m, s in series.items():
        h.update(m.encode() + b"\0" + s.ts_ms.dtype.str.encode() + s.ts_ms.tobytes())
        for f, col in s.values.items():
            h.update(f.encode() + b"\0" + col.dtype.str.encode() + col.tobytes())
    return h.digest()


def rows(d: SynthDistrict, lo: int, hi: int) -> list[tuple[Any, ...]]:
    """The district's store rows with lo <= ts < hi: `bench.store.district_rows`'s (values
    as meters report them, the reading's index as its seq), made column by column and
    only for the span (10x faster: at hundreds of districts the rows took longer to make
    than the passes to time)."""
    out: list[tuple[Any, ...]] = []
    for meter, s in d.series.items():
        a, b = (int(x) for x in np.searchsorted(s.ts_ms, [lo, hi]))
        cols = {k: np.asarray(v)[a:b].tolist() for k, v in s.values.items()}
        volts, amps = cols["voltage_v"], cols["current_a"]
        out += zip(
            itertools.repeat(meter),
            s.ts_ms[a:b].tolist(),
            itertools.repeat(d.name),
            [round(x, 3) for x in cols["energy_kwh"]],
            itertools.repeat(0.0),
            [round(x, 1) for x in volts],
            [round(x, 2) for x in amps],
            [round(x * v / 1000, 3) for x, v in zip(amps, volts, strict=True)],
            [round(x, 1) for x in cols["clock_offset_s"]],
            range(a, b),
            strict=False,
        )
    return out


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
        for day in [day for k, day in touches if k == i]:
            meter = sorted(d.series)[day % len(d.series)]
            s = d.series[meter]
            at = int(s.ts_ms[np.searchsorted(s.ts_ms, BASE_MS + day * DAY_MS + DAY_MS // 2)])
            out.append(_changed(records(replace(d, series={meter: s}), at, at + 1)[0]))
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
    full_n: int | None,
    core_n: int | None,
    report: Report,
) -> None:
    """The three passes beside the full-read pass, on one store."""
    book = rules_for(fleet.days)
    as_of = fleet.history_end
    print(f"{label}: {fleet.n} districts × {fleet.meters} meters × {fleet.days} days", flush=True)
    full: dict[str, bytes] = {}

    def full_pass(keep: dict[str, bytes] | None = None) -> PassTime:
        return a_pass(fleet, book, store, None, as_of, None, keep, full_n, core_n)

    def summary_pass() -> PassTime:
        return a_pass(fleet, book, store, state, as_of, full, None, None, core_n)

    first = " (packs day blocks)" if label == "embedded" else ""
    report.add(f"{label} full read, first{first}", full_pass(full))
    report.add(f"{label} full read", full_pass())
    report.add(f"{label} summaries, first pass", summary_pass())
    report.add(f"{label} summaries, nothing new", summary_pass())
    # One new day, written as ingest writes it (the store marks its days).
    for i in range(fleet.n):
        store.write(records(fleet.district(i), as_of, as_of + DAY_MS))
    assert store.flush(600)
    as_of += DAY_MS
    full.clear()
    report.add(f"{label} full read, new day", full_pass(full))
    report.add(f"{label} summaries, new day", summary_pass())
    touches = late_touches(fleet, late_share, fleet.seed)
    store.write(late_records(fleet, touches))
    assert store.flush(600)
    full.clear()
    name = f"{label} full read, late {100 * late_share:g} %"
    report.add(name, full_pass(full))
    name = f"{label} summaries, late {100 * late_share:g} % ({len(touches)} days)"
    report.add(name, summary_pass())
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


def embedded(fleet: Fleet, workdir: Path, args: argparse.Namespace, report: Report) -> None:
    path = workdir / "telemetry.sqlite"
    print(f"embedded: history written in {write_embedded(path, fleet):.0f} s", flush=True)
    state = SqliteState(workdir / "state.sqlite")
    store = EmbeddedStore(path, Metrics(), synchronous="OFF", marks=state)
    try:
        scenario("embedded", fleet, store, state, workdir / "state.sqlite", *limits(args), report)
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


def influx(fleet: Fleet, workdir: Path, args: argparse.Namespace, report: Report) -> None:
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
            scenario(
                "influxdb",
                fleet,
                store,
                state,
                workdir / "influx-state.sqlite",
                *limits(args),
                report,
            )
        finally:
            store.close()
            state.close()


def limits(args: argparse.Namespace) -> tuple[float, int | None, int | None]:
    """(late share, districts of the full-read passes, districts with the core)."""
    return args.late, args.full_districts, args.core_districts


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
    p.add_argument(
        "--full-districts",
        type=int,
        default=None,
        help="full-read passes (the baseline and the check) over the first N districts only",
    )
    p.add_argument(
        "--core-districts",
        type=int,
        default=None,
        help="the core in every pass over the first N districts only (its time per district)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"bench.incremental: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    report = Report()
    d = Fleet(args.seed, 1, 3, 2).district(0)  # the rows are district_rows's
    if rows(d, 0, d.end_ms + 1) != district_rows(d):
        raise SystemExit("bench.incremental.rows differs from bench.store.district_rows")
    workdir = scratch_dir("bench-incremental-")
    runs: list[Callable[[], None]] = []
    if args.districts:
        fleet = Fleet(args.seed, args.districts, args.meters, args.days)
        runs.append(lambda: embedded(fleet, workdir, args, report))
    if args.influx_districts:
        small = Fleet(args.seed, args.influx_districts, args.meters, args.days)
        runs.append(lambda: influx(small, workdir, args, report))
    try:
        for run in runs:
            run()
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
