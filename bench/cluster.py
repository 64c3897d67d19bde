"""A pass over many districts split between 1, 2 and 4 worker processes (PostgreSQL state).

    .venv/bin/python -m bench.cluster                       # 2 000 districts, 4 days, 1/2/4
    .venv/bin/python -m bench.cluster --districts 200 --workers 1 --workers 2   # quick

Synthetic fleet: every district has one master meter and `--meters` customers (15-minute
cumulative energy, current, voltage; the master reads the customers' sum plus a few per
cent of line loss), customers grouped into lots of 200 whose verification falls due
within the lot horizon (so every lot is judged). Telemetry goes once into an embedded
store that every worker process reads (WAL: readers in parallel). Each contender gets a
fresh PostgreSQL database (started here, tests.services) with the registry and the
meters seen, then N processes are told to go at once and each calls `Evaluator.run` on
the same as_of: the first opens and plans the pass, all claim partitions until it is
done. Timed from "go" until every process has returned (each returns when the pass is
done). The baseline is one process evaluating the same fleet on the embedded SQLite state
(`Evaluator.run` without a cluster: what a single worker does today), in the same run.
Every cluster run's stored decisions are compared byte for byte with the 1-worker run's.
The telemetry is read once before any contender runs (the embedded store packs its raw
rows into day blocks on a first read: untimed, for all alike).

Nothing here asserts a time; the figures are printed for bench/README.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import psycopg

from monitor.alerts.book import AlertBook
from monitor.core.ports import SeenUpdate
from monitor.core.registry import MeterRow
from monitor.core.rulebook import load_rules
from monitor.core.schema import ELEC_READING, Record
from monitor.electricity.evaluate import load_district
from monitor.evaluation.cluster import ClusterPasses, ClusterSettings
from monitor.evaluation.runner import Evaluator
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.postgres.alerts import PostgresAlerts
from monitor.store.postgres.db import Database
from monitor.store.postgres.passes import PostgresPasses
from monitor.store.postgres.state import PostgresState
from monitor.store.state import SqliteState
from tests.services import PostgreSQL

REPO = Path(__file__).resolve().parent.parent
START_MS = 1772294400000  # 2026-03-01T00:00:00+08:00
STEP_MS = 900_000
CLEAR_MS = 2 * 86_400_000
log = logging.getLogger("bench.cluster")


@dataclass(frozen=True)
class Fleet:
    registry: list[MeterRow]
    seen: dict[str, SeenUpdate]
    as_of_ms: int
    points: int


def district_records(d: int, meters: int, steps: int, rng: np.random.Generator) -> list[Record]:
    """One district's readings: customers' cumulative energy, the master's sum plus loss."""
    name = f"D{d:05d}"
    ts = START_MS + STEP_MS * np.arange(steps, dtype=np.int64)
    use = rng.lognormal(mean=-1.6, sigma=0.5, size=(meters, steps))  # kWh per interval
    errors = rng.normal(0.0, 0.005, size=meters)
    metered = use * (1 + errors[:, None])
    loss = 1.0 + rng.uniform(0.02, 0.06)
    master = use.sum(axis=0) * loss
    out = []
    for k in range(meters + 1):
        meter = f"{name}-M" if k == meters else f"{name}-{k:03d}"
        energy = np.cumsum(master if k == meters else metered[k]) + 1000.0
        current = (master if k == meters else use[k]) * 4 / 0.23
        for i in range(steps):
            out.append(
                Record(
                    ELEC_READING,
                    meter,
                    name,
                    int(ts[i]),
                    {
                        "energy_kwh": round(float(energy[i]), 3),
                        "current_a": round(float(current[i]), 3),
                        "voltage_v": 230.0,
                    },
                )
            )
    return out


def build(store_path: Path, districts: int, meters: int, days: int, seed: int) -> Fleet:
    rng = np.random.default_rng(seed)
    steps = days * 96
    store = EmbeddedStore(store_path, Metrics())
    registry: list[MeterRow] = []
    seen: dict[str, SeenUpdate] = {}
    last = START_MS + STEP_MS * (steps - 1)
    points = 0
    lot_size, counter = 200, 0
    for d in range(districts):
        records = district_records(d, meters, steps, rng)
        store.write(records)
        points += len(records)
        name = f"D{d:05d}"
        for k in range(meters + 1):
            master = k == meters
            meter = f"{name}-M" if master else f"{name}-{k:03d}"
            row: dict[str, Any] = {"meter_id": meter, "kind": "elec", "district": name}
            if master:
                row["role"] = "master"
            else:
                row |= {
                    "lot": f"L{counter // lot_size:04d}",
                    "accuracy_class": "2",
                    "installed_on": "2018-06-01",
                    "period_years": 8,
                }
                counter += 1
            registry.append(MeterRow.model_validate(row))
            seen[meter] = SeenUpdate("elec", name, START_MS, last, steps, last / 1000)
    # The embedded store packs raw rows into day blocks on their first read: read every
    # district's window once here, untimed, so that no contender (the first one run, the
    # baseline) pays for it and the others not.
    window = load_rules(REPO / "config" / "rules.yaml").rules.elec.estimation.window_days
    start = last - int(window * 86_400_000)
    for d in range(districts):
        load_district(store, f"D{d:05d}", start, last)
    store.close()
    return Fleet(registry, seen, last, points)


# -- worker processes -----------------------------------------------------------------


@contextmanager
def atomic(db: Database) -> Iterator[None]:
    with db.transaction():
        yield


@dataclass(frozen=True)
class Spec:
    index: int
    url: str
    store: str
    rules: str
    as_of_ms: int
    partition_size: int


def child(spec: Spec, go: Event, results: Queue[tuple[int, float, int] | int]) -> None:
    logging.basicConfig(level=logging.WARNING)
    store = EmbeddedStore(Path(spec.store), Metrics())
    db = Database(spec.url, max_size=4)
    state = PostgresState(db, f"w{spec.index}")
    book = load_rules(Path(spec.rules))
    done = [0]
    ev = Evaluator(store, state, alerts=AlertBook(PostgresAlerts(db), CLEAR_MS))
    settings = ClusterSettings(f"w{spec.index}", 60.0, spec.partition_size, poll_s=0.05)
    ev.use_cluster(
        ClusterPasses(
            ev, PostgresPasses(db), settings, lambda: atomic(db),
            lambda stage: done.__setitem__(0, done[0] + 1),
        )
    )  # fmt: skip
    state.registry_rows("elec")  # connect and migrate before the clock runs
    results.put(spec.index)
    go.wait()
    t = time.perf_counter()
    ev.run(spec.as_of_ms, book, decisions=False)
    results.put((spec.index, time.perf_counter() - t, done[0]))
    db.close()
    store.close()


def cluster_run(
    server: PostgreSQL, fleet: Fleet, store: Path, rules: Path, workers: int, size: int
) -> tuple[float, list[tuple[int, float, int]], str]:
    url = server.create_database(f"bench_{workers}_{int(time.time() * 1000) % 10**9}")
    db = Database(url)
    state = PostgresState(db, "loader")
    state.upsert_meters(fleet.registry)
    state.note_seen(fleet.seen)
    state.flush_seen()
    db.close()
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results: Any = ctx.Queue()
    specs = [Spec(i, url, str(store), str(rules), fleet.as_of_ms, size) for i in range(workers)]
    procs = [ctx.Process(target=child, args=(s, go, results)) for s in specs]
    for p in procs:
        p.start()
    for _ in procs:
        results.get(timeout=300)
    t = time.perf_counter()
    go.set()
    done = [results.get(timeout=7200) for _ in procs]
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
    return wall, sorted(done), url


def decisions_text(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT scope, subject, body FROM decisions ORDER BY scope, subject"
        ).fetchall()


def baseline_child(store_path: str, rules: str, state_path: str, as_of_ms: int, out: Any) -> None:
    store = EmbeddedStore(Path(store_path), Metrics())
    state = SqliteState(Path(state_path))
    ev = Evaluator(store, state, alerts=AlertBook(Path(state_path), CLEAR_MS))
    book = load_rules(Path(rules))
    t = time.perf_counter()
    ev.run(as_of_ms, book)
    out.put(time.perf_counter() - t)
    state.close()
    store.close()


def baseline(fleet: Fleet, store_path: Path, rules: Path, workdir: Path) -> tuple[float, list[Any]]:
    """One process on the embedded state, spawned like the workers (same BLAS threads)."""
    state_path = workdir / "state.sqlite"
    state = SqliteState(state_path)
    state.upsert_meters(fleet.registry)
    state.note_seen(fleet.seen)
    state.flush_seen()
    state.close()
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    args = (str(store_path), str(rules), str(state_path), fleet.as_of_ms, out)
    proc = ctx.Process(target=baseline_child, args=args)
    proc.start()
    wall = float(out.get(timeout=7200))
    proc.join()
    db = sqlite3.connect(state_path)
    rows = db.execute(
        "SELECT scope, subject, body FROM decisions ORDER BY scope, subject"
    ).fetchall()
    db.close()
    return wall, rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    p.add_argument("--districts", type=int, default=2000)
    p.add_argument("--meters", type=int, default=5, help="customers per district")
    p.add_argument("--days", type=int, default=4, help="days of 15-minute readings")
    p.add_argument("--partition-size", type=int, default=50, help="districts per partition")
    p.add_argument("--workers", type=int, action="append", help="repeatable (default 1, 2, 4)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    workers = args.workers or [1, 2, 4]
    # One BLAS thread per process, as the image runs (Dockerfile): N processes on 2 cores
    # must not each start a thread per core. Every contender (the baseline too) is a
    # spawned child, which reads these when it loads numpy; this process loaded it already.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("monitor").setLevel(logging.WARNING)
    cores = os.cpu_count() or 1
    print(
        f"bench.cluster: {args.districts} districts x ({args.meters} customers + master), "
        f"{args.days} days of 15-min readings, partitions of {args.partition_size} districts; "
        f"{cores} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        fleet = build(
            workdir / "telemetry.sqlite", args.districts, args.meters, args.days, args.seed
        )
        print(
            f"fleet: {len(fleet.registry)} meters, {fleet.points:,} readings written in "
            f"{time.perf_counter() - t:.0f}s"
        )
        rules = REPO / "config" / "rules.yaml"
        rows: list[tuple[str, float, str]] = []
        reference: list[Any] | None = None
        if not args.no_baseline:
            wall, reference = baseline(fleet, workdir / "telemetry.sqlite", rules, workdir)
            rows.append(("1 process, embedded SQLite state (no cluster)", wall, ""))
            print(f"baseline: {wall:.1f}s")
        server = PostgreSQL()
        server.start()
        try:
            first: float | None = None
            first_rows: list[Any] | None = None
            for n in workers:
                wall, done, url = cluster_run(
                    server, fleet, workdir / "telemetry.sqlite", rules, n, args.partition_size
                )
                got = decisions_text(url)
                first = first or wall
                first_rows = first_rows or got
                same = got == first_rows and (reference is None or got == reference)
                parts = ", ".join(f"w{i}: {k} partitions {s:.1f}s" for i, s, k in done)
                note = f"{parts}; decisions identical: {'yes' if same else 'NO'}"
                rows.append((f"{n} worker process(es), PostgreSQL state", wall, note))
                print(f"{n} workers: {wall:.1f}s ({note})")
        finally:
            server.cleanup()
    print()
    print(
        "| contender | pass wall time | districts/s | speed-up vs 1 worker | per core used | notes |"
    )
    print("|---|---|---|---|---|---|")
    one = next((w for label, w, _ in rows if label.startswith("1 worker")), None)
    for label, wall, note in rows:
        n = int(label.split()[0]) if "worker" in label else 1
        speed = f"{one / wall:.2f}x" if one and "worker" in label else ""
        per_core = f"{one / wall / min(n, cores):.2f}" if one and "worker" in label else ""
        print(
            f"| {label} | {wall:.1f} s | {args.districts / wall:.0f} | {speed} | {per_core} | {note} |"
        )


if __name__ == "__main__":
    main()
