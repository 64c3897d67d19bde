"""Day summaries of another revision against this one's: the same districts, the same run.

    .venv/bin/python -m bench.day_summaries --against f3fd81b         # format 1 (its first)
    .venv/bin/python -m bench.day_summaries --against main --districts 8 --repeat 10

`monitor/electricity/days.py` of the revision `--against` (taken with `git show`, so run it
from a git checkout) and of this checkout read the same embedded store
(`bench.estimate.synth_district` districts, 100 households and a master, `--days` of
15-minute readings, written once), each into its own state: the first pass (reads every
day, keeps its summaries), then "nothing new" `--repeat` times, the two alternating, and
the Series of both compared with a full read (identical, or the script stops). Printed:
ms per district of `load_district_days` (median and range), and the summaries' mean size
per district-day. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Sequence

from bench.estimate import DAY_MS, scratch_dir
from bench.incremental import FIELDS, Fleet, digest, peak_rss_mb, write_embedded
from monitor.electricity import days as current
from monitor.electricity.evaluate import load_district
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState


def revision(rev: str) -> types.ModuleType:
    """`monitor/electricity/days.py` as it was at `rev`, as a module."""
    src = subprocess.run(
        ["git", "show", f"{rev}:monitor/electricity/days.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"days_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(src, f"days.py@{rev}", "exec"), module.__dict__)
    return module


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.day_summaries", description=__doc__.split("\n")[0]
    )
    p.add_argument("--against", required=True, help="a git revision (e.g. f3fd81b, main)")
    p.add_argument("--districts", type=int, default=4)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--repeat", type=int, default=6)
    args = p.parse_args(argv)
    print(
        f"bench.day_summaries: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    kinds = {args.against: revision(args.against), "this checkout": current}
    fleet = Fleet(1, args.districts, 100, args.days)
    workdir = scratch_dir("bench-day-summaries-")
    try:
        write_embedded(workdir / "telemetry.sqlite", fleet)
        store = EmbeddedStore(workdir / "telemetry.sqlite", Metrics(), synchronous="OFF")
        states = {k: SqliteState(workdir / f"state-{n}.sqlite") for n, k in enumerate(kinds)}
        as_of = fleet.history_end
        start = as_of - fleet.days * DAY_MS
        names = [fleet.meta(i).name for i in range(fleet.n)]
        full = {name: digest(load_district(store, name, start, as_of)) for name in names}

        def a_pass(kind: str) -> float:
            spent = 0.0
            for name in names:
                t0 = time.perf_counter()
                series, _ = kinds[kind].load_district_days(
                    store, states[kind], name, start, as_of, 0, FIELDS
                )
                spent += time.perf_counter() - t0
                if digest(series) != full[name]:  # untimed
                    raise SystemExit(f"{kind}: {name} differs from a full read")
            return 1000 * spent / len(names)

        for kind in kinds:
            print(f"  {kind:<16} first pass {a_pass(kind):6.0f} ms per district", flush=True)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.repeat):
            for kind in list(kinds)[:: 1 if r % 2 else -1]:
                times[kind].append(a_pass(kind))
        for n, kind in enumerate(kinds):
            with sqlite3.connect(workdir / f"state-{n}.sqlite") as db:
                (size,) = db.execute("SELECT avg(length(body)) FROM day_summaries").fetchone()
            t = times[kind]
            print(
                f"  {kind:<16} nothing new: median {statistics.median(t):5.1f} ms per district "
                f"({min(t):.1f}–{max(t):.1f}, {len(t)} passes); {size / 1024:.1f} KiB per "
                "district-day",
                flush=True,
            )
        store.close()
        for state in states.values():
            state.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load at end {os.getloadavg()[0]:.2f}, peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
