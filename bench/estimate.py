"""Estimator benchmark: accuracy against simulated ground truth, and the speed of a pass.

    .venv/bin/python -m bench.estimate                         # accuracy + 10 000 districts
    .venv/bin/python -m bench.estimate --quick                 # accuracy + 200 districts
    .venv/bin/python -m bench.estimate --speed-districts 1000 --processes 2
    .venv/bin/python -m bench.estimate --skip-speed            # accuracy only
    .venv/bin/python -m bench.estimate --skip-accuracy --skip-speed   # test-bed families only

Part 1 (accuracy) pushes a simulated fleet with known meter errors through the real
path: simulator messages → `parse_message` → `EmbeddedStore.write` (batches of 5 000)
→ registry (`parse_rows`) and seen meters (`summarise_seen`) in `SqliteState` →
`Evaluator.run` as of the last reading, with `config/rules.yaml`. It does this once
per register resolution (0.001 and 0.01 kWh) and compares every customer meter's
decision with the truth.

Part 1b (test-bed families, `bench.families`) runs the core on loss physics the estimator
was not written for: the project's simulator with customer-current and trunk-current I²R
loss, and AC power flows (pandapower) on five SimBench LV grids without and with PV
prosumers, with unmetered street lighting, and with the feeder's topology known; per
family it prints evaluable share, median and p95 |Δe|, coverage, meters beyond the limit
by state and healthy meters flagged (`--skip-families` leaves it out; the AC families need
the `testbed` extra and cache solved feeders under ~/.cache/meter-state-monitor/testbed).

Part 2 (speed) times the evaluation core, `fit_district` + `meter_decision` for every
meter, over N synthetic districts of 100 meters × 30 days generated directly as numpy
arrays (no MQTT, no store), split over spawned processes that regenerate their own
districts from a seed; then it times `EmbeddedStore.series` on one stored district
(its first read packs the window's days; the later ones, timed, read the packed days)
and extrapolates the store read time to N districts.

Notes on the set-up:

- the accuracy stores live on tmpfs (/dev/shm) with `synchronous="OFF"`: what is measured
  there is the estimator, not fsync; Evaluator.run uses the rules' window (30 days), so of
  the 60 simulated days only the last 30 feed the estimate (the earlier ones let the
  planted faults age, e.g. the stopped meter has been stopped for weeks);
- spawned processes get `--blas-threads` BLAS threads (default 1). OpenBLAS otherwise starts
  one thread per CPU in every process, and on ~100×100 systems those threads cost more
  than they give (the speed part prints a probe of both settings);
- the machine may be shared: the timings are what this run saw, not a property of the code.

The script prints figures; it asserts nothing on timing.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench import families
from bench.common import map_spawned
from monitor.core.clock import format_ts
from monitor.core.decision import Stamp
from monitor.core.ports import Series, meter_series
from monitor.core.registry import MeterRow, parse_rows
from monitor.core.rulebook import load_rules
from monitor.core.schema import ELEC_READING, Record
from monitor.electricity.evaluate import READING_FIELDS, fit_district, meter_decision
from monitor.evaluation.runner import Evaluator
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec, MeterTruth
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState

FloatArray = npt.NDArray[np.float64]

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "config" / "rules.yaml"
BASE_MS = 1772294400000  # 2026-03-01T00:00:00+08:00, a local midnight
DAY_MS = 86_400_000
INTERVAL_MS = 900_000
STATES = ("normal", "watch", "suspect", "faulty", "unknown")
ACTIONS = ("keep", "extend", "resample", "replace")
HEALTHY_PCT = 2.0  # class-2 verification MPE
LIMIT_PCT = 3.5  # class-2 in-service limit (JJF(冀)174-2020)
FUNCTION_FAULTS = ("stopped", "tamper", "clock")
WRITE_BATCH = 5000

# Targets at 0.001 kWh (printed as PASS/MISS, never asserted).
TARGET_MEDIAN_PP = 0.2
TARGET_COVERAGE = 0.90


# =============================================================================
# Part 1: accuracy through the real path
# =============================================================================


@dataclass(frozen=True)
class AccuracyTask:
    """One accuracy run: a fleet at one register resolution."""

    resolution_kwh: float
    days: int
    seed: int
    districts: int
    meters: tuple[int, int]
    workdir: str


@dataclass(frozen=True)
class MeterOutcome:
    """One customer meter: truth beside what the evaluation said."""

    meter: str
    district: str
    true_pct: float
    vacant: bool
    faults: tuple[str, ...]
    est_pct: float | None
    ci: tuple[float, float] | None
    evaluable: bool
    state: str
    decision: str
    rules: tuple[str, ...]
    current_a: float | None
    fault_day: float | None  # day (from the simulation start) the first planted fault began

    @property
    def truth_class(self) -> str:
        """Row of the confusion matrix."""
        for fault in FUNCTION_FAULTS:
            if fault in self.faults:
                return f"fault: {fault}"
        size = abs(self.true_pct)
        if size > LIMIT_PCT:
            return "beyond |e|>3.5 %"
        if size > HEALTHY_PCT:
            return "between 2-3.5 %"
        return "healthy, vacant" if self.vacant else "healthy |e|<=2 %"

    @property
    def healthy(self) -> bool:
        """Within the verification MPE and no planted function fault."""
        return abs(self.true_pct) <= HEALTHY_PCT and not any(
            f in self.faults for f in FUNCTION_FAULTS
        )

    @property
    def covered(self) -> bool:
        """The 95 % interval contains the true error."""
        return self.ci is not None and self.ci[0] <= self.true_pct <= self.ci[1]

    @property
    def abs_dev(self) -> float:
        """|estimated − true| in percentage points (NaN without an estimate)."""
        return abs(self.est_pct - self.true_pct) if self.est_pct is not None else math.nan


@dataclass(frozen=True)
class DistrictOutcome:
    """One district's gates and balance, with its planted trouble."""

    district: str
    customers: int
    gates_passed: bool | None
    failures: tuple[str, ...]
    line_loss_pct: float | None
    completeness: float | None
    interval_completeness: float | None
    n_intervals: int | None
    residual_rms_pct: float | None
    n_blocks: int | None
    master_gaps: int | None
    master_true_pct: float
    stopped_meter: str | None
    note: str


@dataclass
class AccuracyRun:
    """What one resolution produced."""

    task: AccuracyTask
    messages: int
    records: int
    rejected: int
    as_of: str
    window_days: float
    ingest_s: float
    evaluate_s: float
    meters: list[MeterOutcome] = field(default_factory=list)
    districts: list[DistrictOutcome] = field(default_factory=list)


def run_accuracy(task: AccuracyTask) -> AccuracyRun:
    """Simulate, ingest through parse_message and the embedded store, evaluate, compare."""
    workdir = Path(task.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    spec = FleetSpec(
        start_ms=BASE_MS,
        seed=task.seed,
        districts=task.districts,
        meters_per_district=task.meters,
        taxis=0,
        register_resolution_kwh=task.resolution_kwh,
        missing_rate=0.01,
        duplicate_rate=0.005,
        disorder_rate=0.01,
        vacant_share=0.04,
        beyond_limit_share=0.06,
        beyond_limit_error_pct=(2.5, 6.0),
    )
    book = load_rules(RULES_PATH)  # before the long ingest: a broken rules file fails fast
    fleet = Fleet(spec)
    # synchronous=OFF: durability is not under test here, only what the estimator makes of
    # the data; the files live on tmpfs when there is one (see `scratch_dir`).
    store = EmbeddedStore(workdir / "telemetry.sqlite", Metrics(), synchronous="OFF")
    state = SqliteState(workdir / "state.sqlite")
    parsed = parse_rows(fleet.registry_rows())
    if parsed.errors:
        raise RuntimeError(f"simulated registry refused: {parsed.errors[:3]}")
    state.upsert_meters(parsed.rows)

    t0 = time.perf_counter()
    messages = records = rejected = 0
    last_reading_ms = 0
    batch: list[Record] = []

    def flush() -> None:
        store.write(batch)
        state.note_seen(summarise_seen(batch, time.time()))
        batch.clear()

    for message in fleet.messages(BASE_MS, BASE_MS + task.days * DAY_MS):
        messages += 1
        parsed_message = parse_message(message.topic, message.payload)
        if isinstance(parsed_message, Record):
            records += 1
            batch.append(parsed_message)
            if parsed_message.measurement is ELEC_READING:
                last_reading_ms = max(last_reading_ms, parsed_message.ts_ms)
            if len(batch) >= WRITE_BATCH:
                flush()
        elif parsed_message is not None:
            rejected += 1
    if batch:
        flush()
    ingest_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = Evaluator(store, state).run(last_reading_ms, book)
    evaluate_s = time.perf_counter() - t0
    store.close()
    state.close()

    truth = fleet.truth()
    window_days = float(book.rules.elec.estimation.window_days)
    run = AccuracyRun(
        task, messages, records, rejected, result.as_of, window_days, ingest_s, evaluate_s
    )
    stopped_in: dict[str, str] = {}
    masters: dict[str, float] = {}
    for meter, t in truth.items():
        if t.get("role") == "master":
            masters[t["district"]] = t["error_pct"]
        elif "stopped" in t["faults"]:
            stopped_in[t["district"]] = meter
    for meter, decision in sorted(result.meters.items()):
        facts = truth.get(meter)
        if facts is None or facts.get("role") != "customer":
            continue
        ev = decision.evidence
        ci = ev.get("error_ci_pct")
        ci_pair = (
            (float(ci[0]), float(ci[1]))
            if ci is not None and ci[0] is not None and ci[1] is not None
            else None
        )
        est = ev.get("error_pct")
        current = ev.get("mean_current_a")
        run.meters.append(
            MeterOutcome(
                meter=meter,
                district=facts["district"],
                true_pct=facts["error_pct"],
                vacant=bool(facts.get("vacant")),
                faults=tuple(facts["faults"]),
                est_pct=float(est) if est is not None else None,
                ci=ci_pair,
                evaluable=bool(ev.get("evaluable")),
                state=decision.state,
                decision=decision.decision,
                rules=tuple(r.rule for r in decision.reasons),
                current_a=float(current) if current is not None else None,
                fault_day=_fault_day(facts),
            )
        )
    window_ms = int(book.rules.elec.estimation.window_days * DAY_MS)
    for name, dist in sorted(result.districts.items()):
        gates, fit = dist.gates, dist.fit
        run.districts.append(
            DistrictOutcome(
                district=name,
                customers=sum(1 for m in run.meters if m.district == name),
                gates_passed=gates.passed if gates else None,
                failures=tuple(r.rule for r in gates.failures) if gates else (),
                line_loss_pct=gates.line_loss_pct if gates else None,
                completeness=gates.completeness if gates else None,
                interval_completeness=gates.interval_completeness if gates else None,
                n_intervals=gates.n_intervals if gates else None,
                residual_rms_pct=fit.residual_rms_pct if fit else None,
                n_blocks=fit.n_blocks if fit else None,
                master_gaps=_master_gaps(dist.series, dist.master, window_ms),
                master_true_pct=masters.get(name, math.nan),
                stopped_meter=stopped_in.get(name),
                note=dist.note,
            )
        )
    return run


def _master_gaps(series: dict[str, Series], master: str | None, window_ms: int) -> int | None:
    """Grid points of the window without a master reading."""
    if master is None or master not in series:
        return None
    return window_ms // INTERVAL_MS + 1 - len(np.unique(series[master].ts_ms))


def scratch_dir(prefix: str) -> Path:
    """A temporary directory, on tmpfs (/dev/shm) when there is one: no disk I/O waits."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _fault_day(t: MeterTruth) -> float | None:
    when = t.get("fault_ms")
    if not when:
        return None
    return (min(when.values()) - BASE_MS) / DAY_MS


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def _signed(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):+.3f}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report_accuracy(run: AccuracyRun, show_targets: bool) -> None:
    """Print one resolution's figures."""
    task = run.task
    print()
    print(f"--- register resolution {task.resolution_kwh:g} kWh ---")
    print(
        f"fleet: {len(run.districts)} districts, {len(run.meters)} customer meters, "
        f"{task.days} days of 15-min readings (seed {task.seed}); evaluated as of {run.as_of} "
        f"over the rules' window, which starts on day {task.days - run.window_days:g}"
    )
    print(
        f"ingest: {run.messages:,} messages → {run.records:,} records "
        f"({run.rejected} rejected) in {run.ingest_s:.1f} s; Evaluator.run {run.evaluate_s:.1f} s"
    )
    excluded: dict[str, str] = {}
    for d in run.districts:
        if d.stopped_meter is not None:
            excluded[d.district] = f"planted stopped meter {d.stopped_meter}"
        elif not d.gates_passed:
            excluded[d.district] = "data gates failed: " + (
                ", ".join(d.failures) or d.note or "no balance"
            )
    print()
    print(
        "district  meters  gates  loss %  daily cov  intervals  blocks  master gaps  "
        "resid rms %  master e %  evaluable  median |Δe|  mean Δe  coverage  note"
    )
    for d in run.districts:
        ms = [m for m in run.meters if m.district == d.district]
        ev = [m for m in ms if m.evaluable]
        district_devs = [m.abs_dev for m in ev]
        district_signed = [m.est_pct - m.true_pct for m in ev if m.est_pct is not None]
        gate = "-" if d.gates_passed is None else ("pass" if d.gates_passed else "FAIL")
        print(
            f"{d.district:<8}  {d.customers:>6}  {gate:>5}  {_fmt(d.line_loss_pct, 2):>6}  "
            f"{_fmt(d.completeness, 4):>9}  "
            f"{d.n_intervals if d.n_intervals is not None else '-':>9}  "
            f"{d.n_blocks if d.n_blocks is not None else '-':>6}  "
            f"{d.master_gaps if d.master_gaps is not None else '-':>11}  "
            f"{_fmt(d.residual_rms_pct, 2):>11}  {_fmt(d.master_true_pct, 3):>10}  "
            f"{_pct(len(ev), len(ms)):>9}  "
            f"{_fmt(statistics.median(district_devs) if district_devs else None):>11}  "
            f"{_signed(district_signed) if district_signed else '-':>7}  "
            f"{_pct(sum(m.covered for m in ev), len(ev)):>8}  "
            f"{excluded.get(d.district, '')}"
        )

    print(
        "(blocks: energy-balance equations between complete boundaries; master gaps: grid "
        "points of the window without a master reading; mean Δe = mean(estimated − true) over "
        "evaluable meters, ≈ −(master e) since the master is the reference)"
    )

    included = [m for m in run.meters if m.district not in excluded]
    evaluable = [m for m in included if m.evaluable]
    devs = np.array([m.abs_dev for m in evaluable])
    signed = np.array([m.est_pct - m.true_pct for m in evaluable if m.est_pct is not None])
    covered = sum(m.covered for m in evaluable)
    print()
    print(
        f"accuracy over {len(included)} customer meters of the "
        f"{len(run.districts) - len(excluded)} included districts "
        f"(excluded: {', '.join(sorted(excluded)) or 'none'}):"
    )
    print(f"  evaluable: {len(evaluable)} ({_pct(len(evaluable), len(included))})")
    if len(devs):
        print(
            f"  |estimated − true error|: median {np.median(devs):.3f} pp, "
            f"95th percentile {np.percentile(devs, 95):.3f} pp, max {devs.max():.3f} pp; "
            f"mean signed {signed.mean():+.3f} pp"
        )
        halves = np.array([(m.ci[1] - m.ci[0]) / 2 for m in evaluable if m.ci is not None])
        print(
            f"  95 % CI coverage: {covered}/{len(evaluable)} ({_pct(covered, len(evaluable))}); "
            f"CI half-width median {np.median(halves):.3f} pp"
        )
    not_evaluable = Counter(
        next((r for r in m.rules if r.startswith("elec.estimation")), "other")
        for m in included
        if not m.evaluable
    )
    if not_evaluable:
        print(
            "  not evaluable, by reason: "
            + ", ".join(f"{k} {v}" for k, v in not_evaluable.most_common())
        )

    print()
    _confusion(included, "decision matrix, included districts")
    rest = [m for m in run.meters if m.district in excluded]
    if rest:
        print()
        _confusion(
            rest, "decision matrix, excluded districts (" + ", ".join(sorted(excluded)) + ")"
        )

    beyond = [m for m in run.meters if abs(m.true_pct) > LIMIT_PCT]
    flagged = [m for m in beyond if m.state in ("suspect", "faulty")]
    not_normal = [m for m in beyond if m.state != "normal"]
    healthy_replaced = [m for m in run.meters if m.healthy and m.decision == "replace"]
    false_alarms = [
        m for m in run.meters if m.healthy and m.state in ("suspect", "faulty", "watch")
    ]
    print()
    print("notable meters (all districts):")
    for m in beyond:
        if m.state not in ("suspect", "faulty"):
            print("  beyond limit, not suspect: " + _describe(m))
    for m in run.meters:
        if abs(m.true_pct) > HEALTHY_PCT and abs(m.true_pct) <= LIMIT_PCT:
            print("  between 2 and 3.5 %:       " + _describe(m))
    for m in false_alarms:
        print("  healthy, flagged:          " + _describe(m))
    for m in run.meters:
        if any(f in m.faults for f in FUNCTION_FAULTS):
            print("  planted function fault:    " + _describe(m))

    if not show_targets:
        print()
        print(
            f"(same checks at {task.resolution_kwh:g} kWh, for information: median "
            f"{_fmt(float(np.median(devs)) if len(devs) else None)} pp, coverage "
            f"{_pct(covered, len(evaluable))}, beyond-limit not normal "
            f"{len(not_normal)}/{len(beyond)} (suspect/faulty {len(flagged)}), "
            f"healthy replaced {len(healthy_replaced)})"
        )
        return
    median = float(np.median(devs)) if len(devs) else math.inf
    coverage = covered / len(evaluable) if evaluable else 0.0
    print()
    print(f"targets at {task.resolution_kwh:g} kWh:")
    rows = (
        (f"median |Δe| ≤ {TARGET_MEDIAN_PP} pp", f"{median:.3f} pp", median <= TARGET_MEDIAN_PP),
        (
            f"95 % CI coverage ≥ {100 * TARGET_COVERAGE:.0f} %",
            f"{100 * coverage:.1f} %",
            coverage >= TARGET_COVERAGE,
        ),
        (
            f"every meter beyond ±{LIMIT_PCT} % not normal",
            f"{len(not_normal)}/{len(beyond)} (suspect/faulty {len(flagged)})",
            len(not_normal) == len(beyond),
        ),
        (
            "no healthy meter replace",
            f"{len(healthy_replaced)} replaced",
            not healthy_replaced,
        ),
    )
    for label, value, ok in rows:
        print(f"  {label:<36} {value:<28} {_mark(ok)}")


def _describe(m: MeterOutcome) -> str:
    ci = f"[{m.ci[0]:+.2f}, {m.ci[1]:+.2f}]" if m.ci else "-"
    est = f"{m.est_pct:+.2f}" if m.est_pct is not None else "-"
    rule = m.rules[0] if m.rules else "-"
    faults = ",".join(m.faults) or "-"
    if m.fault_day is not None:
        faults += f" (from day {m.fault_day:g})"
    return (
        f"{m.meter} ({m.district}) true {m.true_pct:+.2f} % est {est} CI {ci} "
        f"I {_fmt(m.current_a, 2)} A vacant={m.vacant} faults={faults} → {m.state}/{m.decision} "
        f"({rule})"
    )


def _confusion(meters: Sequence[MeterOutcome], title: str) -> None:
    rows = (
        "healthy |e|<=2 %",
        "healthy, vacant",
        "between 2-3.5 %",
        "beyond |e|>3.5 %",
        *(f"fault: {f}" for f in FUNCTION_FAULTS),
    )
    print(f"{title}:")
    head = " ".join(f"{s:>7}" for s in STATES) + " | " + " ".join(f"{a:>8}" for a in ACTIONS)
    print(f"  {'truth':<18} {'n':>4} | {head}")
    for row in rows:
        group = [m for m in meters if m.truth_class == row]
        if not group:
            continue
        states = Counter(m.state for m in group)
        actions = Counter(m.decision for m in group)
        cells = " ".join(f"{states.get(s, 0):>7}" for s in STATES)
        cells += " | " + " ".join(f"{actions.get(a, 0):>8}" for a in ACTIONS)
        print(f"  {row:<18} {len(group):>4} | {cells}")


# =============================================================================
# Part 2: speed of the evaluation core on synthetic districts
# =============================================================================


@dataclass(frozen=True)
class SpeedTask:
    """A contiguous range of synthetic districts for one process."""

    first: int
    count: int
    seed: int
    meters: int
    days: int
    resolution_kwh: float


@dataclass
class SpeedResult:
    """What one process measured."""

    districts: int = 0
    meters: int = 0
    readings: int = 0
    generate_s: float = 0.0
    fit_s: float = 0.0
    decide_s: float = 0.0
    wall_s: float = 0.0
    maxrss_kb: int = 0
    evaluable: int = 0
    states: dict[str, int] = field(default_factory=dict)
    abs_dev: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SynthDistrict:
    """One synthetic district as the store would return it."""

    name: str
    master: str
    series: dict[str, Series]
    rows: dict[str, MeterRow]
    true_pct: dict[str, float]
    start_ms: int
    end_ms: int


def _bump(hour: FloatArray, centre: FloatArray, width: FloatArray) -> FloatArray:
    distance = (hour[None, :] - centre[:, None] + 12.0) % 24.0 - 12.0
    out: FloatArray = np.exp(-0.5 * (distance / width[:, None]) ** 2)
    return out


def synth_district(
    seed: int, index: int, meters: int = 100, days: int = 30, resolution_kwh: float = 0.001
) -> SynthDistrict:
    """A district of `meters` households and a master over `days`, vectorised.

    Households have their own daily shapes (morning, evening, sometimes midday peaks),
    a day factor and lognormal interval noise; 4 % are vacant. Errors: N(0, 0.5 %)
    clipped at ±1.5 %, 3 % of the meters at ±4–6 %. The master (error N(0, 0.05 %))
    reads consumption plus a fixed and an I²R loss. Registers are cumulative, floored
    to the resolution; 1 % of the readings of every meter are missing.
    """
    rng = np.random.default_rng([seed, index])
    n, steps, dt = meters, days * 96, 0.25
    # The daily shape repeats: compute it over one day's 96 intervals, then per day.
    hour: FloatArray = ((np.arange(96) + 0.5) * dt).astype(np.float64)
    weekend: FloatArray = ((BASE_MS // DAY_MS + np.arange(days) + 3) % 7 >= 5).astype(np.float64)
    vacant = rng.random(n) < 0.04
    live: FloatArray = (~vacant).astype(np.float64)
    base: FloatArray = np.where(
        vacant, rng.lognormal(math.log(0.01), 0.3, n), rng.lognormal(math.log(0.12), 0.4, n)
    )
    morning: FloatArray = rng.uniform(0.2, 1.2, n) * live
    evening: FloatArray = rng.uniform(0.6, 2.2, n) * live
    midday: FloatArray = rng.uniform(0.0, 0.8, n) * live * (rng.random(n) < 0.4)
    daily: FloatArray = base[:, None] + morning[:, None] * _bump(
        hour, rng.uniform(6.0, 8.5, n), rng.uniform(0.6, 1.4, n)
    )
    daily += evening[:, None] * _bump(hour, rng.uniform(18.0, 21.5, n), rng.uniform(1.0, 2.2, n))
    lunch: FloatArray = midday[:, None] * _bump(hour, np.full(n, 13.0), np.full(n, 1.5))
    day_factor = rng.lognormal(-0.5 * 0.15**2, 0.15, (n, days))
    shape: FloatArray = (
        (daily[:, None, :] + lunch[:, None, :] * (1.0 + weekend)[None, :, None])
        * day_factor[:, :, None]
    ).reshape(n, steps)
    sd = np.where(vacant, 0.1, rng.uniform(0.15, 0.35, n))[:, None]
    noise = np.exp(rng.standard_normal((n, steps)) * sd - 0.5 * sd**2)
    spikes = np.zeros((n, steps))
    hits = rng.random((n, steps)) < np.where(vacant, 0.0, 0.03)[:, None]
    spikes[hits] = rng.uniform(0.3, 1.5, int(hits.sum()))
    power = shape * noise + spikes  # kW, (n, steps)
    x = power * dt

    error = np.clip(rng.normal(0.0, 0.005, n), -0.015, 0.015)
    beyond = (rng.random(n) < 0.03) & ~vacant
    error = np.where(beyond, rng.uniform(0.04, 0.06, n) * rng.choice([-1.0, 1.0], n), error)
    total = x.sum(axis=0)
    mean_kw = float(total.mean() / dt)
    fixed_kw = rng.uniform(0.005, 0.015) * mean_kw
    gamma = rng.uniform(0.01, 0.02) / mean_kw
    inflow = total + fixed_kw * dt + gamma * total**2 / dt
    master_error = rng.normal(0.0, 0.0005)

    metered = np.vstack([(1.0 + error)[:, None] * x, (1.0 + master_error) * inflow[None, :]])
    start_reg = np.concatenate([rng.uniform(2_000, 30_000, n), rng.uniform(2e5, 2e6, 1)])
    cum = np.empty((n + 1, steps + 1))
    cum[:, 0] = start_reg
    np.cumsum(metered, axis=1, out=cum[:, 1:])
    cum[:, 1:] += start_reg[:, None]
    registers = np.floor(cum / resolution_kwh) * resolution_kwh

    # A reading at boundary j carries the power of the interval that ended there.
    all_power = np.vstack([power, inflow[None, :] / dt])
    at_reading = np.concatenate([all_power[:, :1], all_power], axis=1)
    v_area = 223.0 - 0.08 * at_reading[n] + rng.normal(0.0, 0.7, steps + 1)
    volts = np.vstack(
        [v_area[None, :] - 0.4 * at_reading[:n] + rng.normal(0, 0.3, (n, steps + 1)), v_area]
    )
    amps = at_reading * 1000.0 / volts
    amps[n] /= 3.0  # master meters are three-phase
    elapsed_days = np.arange(steps + 1) / 96.0
    clock = rng.uniform(-20, 20, n + 1)[:, None] + rng.uniform(-1, 1, n + 1)[:, None] * elapsed_days
    keep = rng.random((n + 1, steps + 1)) >= 0.01

    name = f"S{index:06d}"
    ids = [f"{name}-{i:03d}" for i in range(n)] + [f"{name}-M"]
    ts_all = BASE_MS + np.arange(steps + 1, dtype=np.int64) * INTERVAL_MS
    series = {}
    for i, meter in enumerate(ids):
        mask = keep[i]
        series[meter] = Series(
            ts_all[mask],
            {
                "energy_kwh": registers[i, mask],
                "current_a": amps[i, mask],
                "voltage_v": volts[i, mask],
                "clock_offset_s": clock[i, mask],
            },
        )
    rows = {
        meter: MeterRow(
            meter_id=meter,
            kind="elec",
            role="master" if meter == ids[-1] else "customer",
            district=name,
            lot="SYN-MASTER-2022B1" if meter == ids[-1] else "SYN-DDZY-2020B1",
            accuracy_class="0.5S" if meter == ids[-1] else "2",
            installed_on=date(2020, 3, 1),
            period_years=6 if meter == ids[-1] else 8,
        )
        for meter in ids
    }
    truth = {meter: 100.0 * float(error[i]) for i, meter in enumerate(ids[:-1])}
    return SynthDistrict(name, ids[-1], series, rows, truth, BASE_MS, int(ts_all[-1]))


def speed_worker(task: SpeedTask) -> SpeedResult:
    """Generate and evaluate districts [first, first + count), one at a time."""
    wall = time.perf_counter()
    book = load_rules(RULES_PATH)
    rules = book.rules.elec
    out = SpeedResult()
    states: Counter[str] = Counter()
    # One untimed district first: lazy imports and first-call costs are not per district.
    warm = synth_district(task.seed + 999, task.first, task.meters, task.days, task.resolution_kwh)
    fit_district(warm.name, warm.series, warm.master, rules, warm.start_ms, warm.end_ms)
    for index in range(task.first, task.first + task.count):
        t0 = time.perf_counter()
        d = synth_district(task.seed, index, task.meters, task.days, task.resolution_kwh)
        t1 = time.perf_counter()
        start = d.end_ms - int(rules.estimation.window_days * DAY_MS)
        stamp = Stamp(format_ts(d.end_ms), book.version)
        dist = fit_district(d.name, d.series, d.master, rules, start, d.end_ms)
        t2 = time.perf_counter()
        for meter in sorted(set(d.series) | set(d.rows)):
            decision = meter_decision(meter, d.rows.get(meter), dist, [], rules, stamp, None)
            states[decision.state] += 1
            est = decision.evidence.get("error_pct")
            if decision.evidence.get("evaluable") and est is not None:
                out.evaluable += 1
                out.abs_dev.append(abs(float(est) - d.true_pct[meter]))
        t3 = time.perf_counter()
        out.generate_s += t1 - t0
        out.fit_s += t2 - t1
        out.decide_s += t3 - t2
        out.districts += 1
        out.meters += len(d.series) - 1
        out.readings += sum(len(s.ts_ms) for s in d.series.values())
    out.states = dict(states)
    out.wall_s = time.perf_counter() - wall
    out.maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Processes spawned inside get this many BLAS threads (None: the environment as is)."""
    saved = {k: os.environ.get(k) for k in BLAS_ENV}
    if threads is not None:
        for k in BLAS_ENV:
            os.environ[k] = str(threads)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_speed(districts: int, processes: int, seed: int, threads: int | None) -> SpeedResult:
    """Split districts over spawned processes; combine what they measured."""
    processes = max(1, min(processes, districts))
    share, extra = divmod(districts, processes)
    tasks, first = [], 0
    for p in range(processes):
        count = share + (1 if p < extra else 0)
        tasks.append(SpeedTask(first, count, seed, 100, 30, 0.001))
        first += count
    ctx = mp.get_context("spawn")
    wall = time.perf_counter()
    with blas_threads(threads):
        pool = ctx.Pool(processes)
    try:
        parts = pool.map(speed_worker, tasks, chunksize=1)
        pool.close()
    finally:
        pool.join()
    total = SpeedResult(wall_s=time.perf_counter() - wall)
    states: Counter[str] = Counter()
    for part in parts:
        total.districts += part.districts
        total.meters += part.meters
        total.readings += part.readings
        total.generate_s += part.generate_s
        total.fit_s += part.fit_s
        total.decide_s += part.decide_s
        total.evaluable += part.evaluable
        total.maxrss_kb = max(total.maxrss_kb, part.maxrss_kb)
        total.abs_dev.extend(part.abs_dev)
        states.update(part.states)
    total.states = dict(states)
    return total


def report_speed(result: SpeedResult, processes: int) -> float:
    """Print the core figures; return the core ms per district (one process)."""
    core = result.fit_s + result.decide_s
    per_district = 1000.0 * core / max(result.districts, 1)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"districts {result.districts:,} × 100 meters × 30 days: {result.meters:,} customer meters, "
        f"{result.readings:,} readings evaluated (master included, 1 % missing)"
    )
    print(f"processes: {processes} (spawn); wall time {result.wall_s:.1f} s (generation included)")
    print(
        f"summed over processes: generate {result.generate_s:.1f} s, "
        f"core {core:.1f} s (fit_district {result.fit_s:.1f} s + "
        f"meter_decision {result.decide_s:.1f} s)"
    )
    print(
        f"core per district: {per_district:.1f} ms "
        f"(fit {1000 * result.fit_s / max(result.districts, 1):.1f} ms + decisions "
        f"{1000 * result.decide_s / max(result.districts, 1):.1f} ms); "
        f"generation {1000 * result.generate_s / max(result.districts, 1):.1f} ms per district"
    )
    if result.wall_s > 0 and core + result.generate_s > 0:
        core_wall = result.wall_s * core / (core + result.generate_s)
        print(
            f"core wall time with generation subtracted (pro rata): {core_wall:.1f} s "
            f"= {1000 * core_wall / max(result.districts, 1):.2f} ms per district on "
            f"{processes} processes"
        )
    print(
        f"peak RSS: worker max {result.maxrss_kb / 1024:.0f} MiB (self-reported), "
        f"largest child so far {child_kb / 1024:.0f} MiB (RUSAGE_CHILDREN, accuracy workers "
        f"included), parent {self_kb / 1024:.0f} MiB"
    )
    devs = np.asarray(result.abs_dev)
    states = ", ".join(f"{s} {result.states.get(s, 0):,}" for s in STATES)
    print(f"sanity: states {states}; evaluable {_pct(result.evaluable, result.meters)}", end="")
    if len(devs):
        print(f", |Δe| median {np.median(devs):.3f} pp, p95 {np.percentile(devs, 95):.3f} pp")
    else:
        print()
    return per_district


def _records(d: SynthDistrict) -> list[Record]:
    out = []
    for meter, s in d.series.items():
        cols = {k: v.tolist() for k, v in s.values.items()}
        for j, ts in enumerate(s.ts_ms.tolist()):
            energy = cols["energy_kwh"][j]
            current = cols["current_a"][j]
            volts = cols["voltage_v"][j]
            out.append(
                Record(
                    ELEC_READING,
                    meter,
                    d.name,
                    ts,
                    {
                        "energy_kwh": round(energy, 3),
                        "reverse_kwh": 0.0,
                        "voltage_v": round(volts, 1),
                        "current_a": round(current, 2),
                        "power_kw": round(current * volts / 1000, 3),
                        "clock_offset_s": round(cols["clock_offset_s"][j], 1),
                        "seq": j,
                    },
                )
            )
    return out


@dataclass
class StoreReadResult:
    """Timings of reading stored districts back (seconds, one entry per read)."""

    districts: int
    written: int
    write_s: float
    size_mb: float
    reads: list[float] = field(default_factory=list)
    firsts: list[float] = field(default_factory=list)
    fetches: list[float] = field(default_factory=list)
    groups: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    saves: list[float] = field(default_factory=list)


def store_read(districts: int, seed: int) -> StoreReadResult:
    """Store 100-meter × 30-day districts in an EmbeddedStore, then time reading them back.

    Per district: `store.series(...)` five times; the same SQL on a separate read-only
    connection (fetch) and `meter_series` on its rows (conversion); the core on what the
    store returned; and `SqliteState.save_decisions` of the district's decisions.
    """
    tmp = scratch_dir("bench-estimate-store-")
    try:
        store = EmbeddedStore(tmp / "telemetry.sqlite", Metrics(), synchronous="OFF")
        state = SqliteState(tmp / "state.sqlite")
        book = load_rules(RULES_PATH)
        rules = book.rules.elec
        written = 0
        t0 = time.perf_counter()
        synth = []
        for index in range(districts):
            d = synth_district(seed + 1, index)
            records = _records(d)
            for a in range(0, len(records), 20_000):
                store.write(records[a : a + 20_000])
            written += len(records)
            synth.append(d)
        out = StoreReadResult(districts, written, time.perf_counter() - t0, 0.0)
        raw = sqlite3.connect(f"file:{tmp / 'telemetry.sqlite'}?mode=ro", uri=True)
        # The rows `series` would read without day blocks: one primary-key range per meter.
        sql = (
            f"SELECT ts, {', '.join(READING_FIELDS)} FROM elec_reading "
            "WHERE meter = ? AND ts BETWEEN ? AND ? AND +district = ? ORDER BY ts"
        )
        for d in synth:
            start = d.end_ms - int(rules.estimation.window_days * DAY_MS)
            meters = store.meters(ELEC_READING, d.name)
            for i in range(5):
                t1 = time.perf_counter()
                series = store.series(
                    ELEC_READING, READING_FIELDS, start, d.end_ms, district=d.name
                )
                # The first read packs the window's days (see EmbeddedStore.series).
                (out.firsts if i == 0 else out.reads).append(time.perf_counter() - t1)
            for _ in range(3):
                t1 = time.perf_counter()
                rows = [raw.execute(sql, (m, start, d.end_ms, d.name)).fetchall() for m in meters]
                t2 = time.perf_counter()
                for got in rows:
                    meter_series(got, READING_FIELDS)
                out.fetches.append(t2 - t1)
                out.groups.append(time.perf_counter() - t2)
            stamp = Stamp(format_ts(d.end_ms), book.version)
            t1 = time.perf_counter()
            dist = fit_district(d.name, series, d.master, rules, start, d.end_ms)
            decisions = [
                meter_decision(meter, d.rows.get(meter), dist, [], rules, stamp, None)
                for meter in sorted(series)
            ]
            out.cores.append(time.perf_counter() - t1)
            t1 = time.perf_counter()
            state.save_decisions("meter", [x.as_dict() for x in decisions])
            state.save_district(
                d.name, stamp.as_of, dist.report({x.id: x for x in decisions}, stamp)
            )
            out.saves.append(time.perf_counter() - t1)
        raw.close()
        store.close()
        state.close()
        out.size_mb = sum(f.stat().st_size for f in tmp.iterdir()) / 1e6
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report_store_read(
    r: StoreReadResult, core_ms: float, target_districts: int, processes: int
) -> None:
    """Print the store read figures and the extrapolation to a full pass."""
    read_ms = 1000 * statistics.median(r.reads)
    core_stored = 1000 * statistics.median(r.cores)
    save_ms = 1000 * statistics.median(r.saves)
    print(
        f"embedded store: {r.districts} district(s) of 100 meters × 30 days written "
        f"({r.written:,} readings as Records in {r.write_s:.1f} s; {r.size_mb:.0f} MB on disk "
        "with WAL)"
    )
    print(
        f"store.series(...) for one district ({r.written // max(r.districts, 1):,} rows): "
        f"first read (packs the days) {1000 * statistics.median(r.firsts):.0f} ms, then "
        f"median {read_ms:.0f} ms, min {1000 * min(r.reads):.0f} ms over {len(r.reads)} reads "
        f"(the same rows by bare sqlite3 on its own connection, a key range per meter: "
        f"fetchall {1000 * statistics.median(r.fetches):.0f} ms + meter_series "
        f"{1000 * statistics.median(r.groups):.0f} ms; `python -m bench.store` for more)"
    )
    print(
        f"on the same stored district: core {core_stored:.0f} ms "
        f"(synthetic-array core above: {core_ms:.0f} ms per district); "
        f"save_decisions + save_district {save_ms:.0f} ms"
    )
    n = target_districts
    total_read = read_ms * n / 1000
    total_core = core_ms * n / 1000
    total_save = save_ms * n / 1000
    print(
        f"extrapolated to {n:,} districts: store reads {total_read:,.0f} s "
        f"({total_read / 3600:.2f} h), decision writes {total_save:,.0f} s, estimator core "
        f"{total_core:,.0f} s on one process ({total_core / processes:,.0f} s on {processes})"
    )
    one_pass = total_read + total_core + total_save
    print(
        f"a full single-process Evaluator pass over {n:,} districts ≈ {one_pass:,.0f} s "
        f"({one_pass / 3600:.2f} h), of which store reads {100 * total_read / one_pass:.0f} % "
        f"(with the window's days already packed by an earlier pass; a first pass over "
        f"unpacked days reads at {1000 * statistics.median(r.firsts):.0f} ms per district)"
    )
    if read_ms >= core_ms:
        print(
            f"→ reading from the store, not the estimator, dominates a full pass "
            f"({read_ms / core_ms:.1f}× the core per district). Evaluator reads district after "
            "district through the store's one read connection, so the reads do not spread "
            "over processes the way the core does."
        )
    else:
        print(
            f"→ in this run the estimator core ({core_ms:.0f} ms) outweighs the store read "
            f"({read_ms:.0f} ms) per district"
        )


# =============================================================================


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, run the parts, print."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.estimate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="speed part on 200 districts")
    parser.add_argument("--speed-districts", type=int, default=None, help="default 10 000")
    parser.add_argument("--processes", type=int, default=2, help="spawned processes (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=60, help="accuracy: days simulated")
    parser.add_argument("--districts", type=int, default=6, help="accuracy: districts")
    parser.add_argument(
        "--store-districts", type=int, default=2, help="districts stored for the read timing"
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads per spawned process (default 1; 0 = leave the environment as is)",
    )
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-families", action="store_true", help="leave out Part 1b")
    parser.add_argument(
        "--family", action="append", help="Part 1b: only these families (bench.families)"
    )
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    n_speed = args.speed_districts or (200 if args.quick else 10_000)

    book = load_rules(RULES_PATH)  # refuse to start on a rules file that does not load
    print(
        f"bench.estimate — Python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, rules {RULES_PATH.relative_to(ROOT)} ({book.version})"
    )
    if not args.skip_accuracy:
        print()
        print(
            "=== Part 1: accuracy (simulator → parse_message → EmbeddedStore → Evaluator.run) ==="
        )
        tmp = scratch_dir("bench-estimate-acc-")
        tasks = [
            AccuracyTask(res, args.days, args.seed, args.districts, (40, 120), str(tmp / f"r{i}"))
            for i, res in enumerate((0.001, 0.01))
        ]
        t0 = time.perf_counter()
        try:
            workers = max(1, min(args.processes, len(tasks)))
            with blas_threads((args.blas_threads or None) if workers > 1 else None):
                runs = map_spawned(run_accuracy, tasks, workers)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for run in runs:
            report_accuracy(run, show_targets=run.task.resolution_kwh == 0.001)
        print()
        print(f"accuracy part: {time.perf_counter() - t0:.0f} s on {workers} process(es)")

    if not args.skip_families:
        print()
        print("=== Part 1b: test-bed families (bench.families: fit_district + meter_decision) ===")
        names = args.family or list(families.FAMILIES)
        t0 = time.perf_counter()
        family_tasks = [
            families.FamilyTask(f, args.seed, str(families.DEFAULT_CACHE), 8) for f in names
        ]
        with blas_threads(args.blas_threads or None):
            family_runs = map_spawned(
                families.run_family, family_tasks, max(1, min(args.processes, len(names)))
            )
        families.report(family_runs)
        print(f"families part: {time.perf_counter() - t0:.0f} s")

    if not args.skip_speed:
        print()
        print("=== Part 2: speed of the evaluation core (fit_district + meter_decision) ===")
        threads = args.blas_threads or None
        probe_n = min(n_speed, 40)
        probe = run_speed(probe_n, args.processes, args.seed, None)
        probe_1 = run_speed(probe_n, args.processes, args.seed, 1)
        inherited = os.environ.get("OPENBLAS_NUM_THREADS", f"unset → {os.cpu_count()}")
        print(
            f"BLAS threads probe on {probe_n} districts, {args.processes} processes: "
            f"OPENBLAS_NUM_THREADS as inherited ({inherited}) core "
            f"{1000 * (probe.fit_s + probe.decide_s) / probe_n:.0f} ms/district "
            f"(fit {1000 * probe.fit_s / probe_n:.0f} ms), 1 thread "
            f"{1000 * (probe_1.fit_s + probe_1.decide_s) / probe_n:.0f} ms/district "
            f"(fit {1000 * probe_1.fit_s / probe_n:.0f} ms)"
        )
        print(f"main run: BLAS threads per process = {threads or 'as inherited'}")
        result = run_speed(n_speed, args.processes, args.seed, threads)
        per_district = report_speed(result, max(1, min(args.processes, n_speed)))
        print()
        with blas_threads(threads):
            pool = mp.get_context("spawn").Pool(1)
        try:
            stored = pool.apply(store_read, (args.store_districts, args.seed))
            pool.close()
        finally:
            pool.join()
        report_store_read(stored, per_district, n_speed, max(1, min(args.processes, n_speed)))


if __name__ == "__main__":
    main()
