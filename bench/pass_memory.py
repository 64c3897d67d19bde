"""How much memory a one-process evaluation pass needs as districts grow.

    .venv/bin/python -m bench.pass_memory                      # 4 and 16 districts, 60 days
    .venv/bin/python -m bench.pass_memory --districts 2 --districts 8 --days 10   # quick

`bench.estimate.synth_district` districts (100 households and a master, 15-minute
registers) are written once per size into an embedded store (straight into the file,
as bench.incremental does) with their registry in a SQLite state. Then, each in a fresh
process, `Evaluator.run(as_of, rules, record=False)` over them:

- "streams": the pass as it is (each district's readings dropped once its meters are
  decided);
- "holds": the same pass through a store that keeps a reference to every Series it
  hands out, which is what the pass used to do (every district's readings stayed in
  its result to the end): the baseline, in the same run.

Printed: each pass's peak resident set above the process's before it (sampled), and
its growth per district. Each process runs the pass once untimed first (the embedded
store packs its day blocks on a first read).
The decisions of both are compared (identical, or the script stops). Nothing asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.estimate import BASE_MS, DAY_MS, RULES_PATH, scratch_dir, synth_district
from bench.store import INSERT, district_rows
from monitor.core.ports import Series
from monitor.core.rulebook import load_rules
from monitor.core.schema import Measurement
from monitor.evaluation.runner import Evaluator
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState

MEGA = 1024 * 1024


class HoldingStore:
    """The store, keeping every Series it hands out alive (the old pass's footprint)."""

    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store
        self.held: list[dict[str, Series]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def series(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        district: str | None = None,
    ) -> dict[str, Series]:
        out = self._store.series(measurement, fields, start_ms, end_ms, district=district)
        self.held.append(out)
        return out


def rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class RssSampler:
    """The resident set before a block and its peak during it (sampled every 5 ms: the
    process's own ru_maxrss is the import-time peak, which the pass may stay under)."""

    def __init__(self) -> None:
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.before = self.peak = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())


def make_fleet(folder: Path, districts: int, meters: int, days: int, seed: int) -> int:
    """Write the fleet; returns as_of (the history's end)."""
    as_of = BASE_MS + days * DAY_MS - 1
    store_path, state_path = folder / "telemetry.sqlite", folder / "state.sqlite"
    EmbeddedStore(store_path, Metrics()).close()
    state = SqliteState(state_path)
    db = sqlite3.connect(store_path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    listing = "INSERT OR IGNORE INTO elec_reading_meters (district, meter) VALUES (?, ?)"
    for i in range(districts):
        d = synth_district(seed, i, meters, days)
        db.execute("BEGIN")
        db.executemany(INSERT, district_rows(d))
        db.executemany(listing, sorted((d.name, m) for m in d.series))
        db.execute("COMMIT")
        state.upsert_meters(list(d.rows.values()))
    db.close()
    state.close()
    return as_of


def one_pass(folder: str, as_of: int, holding: bool, out: Any) -> None:
    """In a fresh process: one pass; sends back peak RSS, seconds and the decisions."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    store = EmbeddedStore(Path(folder) / "telemetry.sqlite", Metrics())
    state = SqliteState(Path(folder) / "state.sqlite")
    book = load_rules(RULES_PATH)
    Evaluator(store, state).run(as_of, book, record=False)  # packs the day blocks, untimed
    gc.collect()
    reader: Any = HoldingStore(store) if holding else store
    sampler = RssSampler()
    t0 = time.perf_counter()
    with sampler:
        result = Evaluator(reader, state).run(as_of, book, record=False)
    seconds = time.perf_counter() - t0
    before, peak = sampler.before, sampler.peak
    decisions = {m: d.as_dict() for m, d in result.meters.items()}
    out.send((before, peak, seconds, json.dumps(decisions, sort_keys=True)))
    out.close()


def measure(folder: Path, as_of: int, holding: bool) -> tuple[int, int, float, str]:
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=one_pass, args=(str(folder), as_of, holding, there))
    proc.start()
    got: tuple[int, int, float, str] = here.recv()
    proc.join()
    return got


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--districts", type=int, action="append", help="repeatable (default 4, 16)")
    p.add_argument("--meters", type=int, default=100)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)
    sizes = sorted(set(args.districts or [4, 16]))
    print(f"# bench.pass_memory — {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"# {args.meters} households + master per district, {args.days} days, 15-minute")
    rows = []
    for n in sizes:
        folder = scratch_dir("pass-memory-")
        try:
            t0 = time.perf_counter()
            as_of = make_fleet(folder, n, args.meters, args.days, args.seed)
            print(f"{n} districts: store written in {time.perf_counter() - t0:.0f} s")
            got = {m: measure(folder, as_of, m == "holds") for m in ("streams", "holds")}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if got["streams"][3] != got["holds"][3]:
            raise SystemExit(f"{n} districts: the decisions differ between the two passes")
        for mode, (before, peak, seconds, _) in got.items():
            rows.append((n, mode, before, peak, seconds))
            print(
                f"  {mode:<8} peak RSS {peak / MEGA:7.0f} MB, {(peak - before) / MEGA:6.0f} MB "
                f"above the {before / MEGA:.0f} MB before the pass"
                f"  pass {seconds:6.1f} s",
                flush=True,
            )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for mode in ("streams", "holds"):
            a = next(r for r in rows if r[0] == lo and r[1] == mode)
            b = next(r for r in rows if r[0] == hi and r[1] == mode)
            per = (b[3] - a[3]) / (hi - lo) / MEGA
            print(f"{mode:<8} peak grows {per:6.1f} MB per district ({lo} → {hi} districts)")


if __name__ == "__main__":
    main()
