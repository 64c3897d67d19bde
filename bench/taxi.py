"""Taxi benchmark: when planted fare-meter faults are flagged, and how often clean meters are.

    .venv/bin/python -m bench.taxi                         # 200 taxis × 60 days, two fleets
    .venv/bin/python -m bench.taxi --quick                 # 60 taxis × 20 days
    .venv/bin/python -m bench.taxi --taxis 300 --days 45 --check-days 10,45
    .venv/bin/python -m bench.taxi --quick --check-days all  # Evaluator.run every day (slow)

Two simulated fleets (same seed, so the same taxis carry the same planted faults) go
through the real path: simulator messages → `parse_message` → `EmbeddedStore.write`
(batches of 5 000) → registry (`parse_rows`) and seen meters (`summarise_seen`) in
`SqliteState` → evaluation with `config/rules.yaml` and `config/tariffs.yaml`:

- "default spread": `FleetSpec.taxi_bias_pct` as shipped, (0.5, 0.5): meters differ by
  ±0.5 % (1 sd), so some genuine meters sit beyond the +0.5 % guard band, or even
  beyond JJG 517's +1 %, *relative to the fleet* (the only scale the evaluator has);
- "tight": (0.5, 0.2), a fleet in which clean really means inside the guard band.

Each fleet has the simulator's GNSS error (a shared +1.5 % bias and ±1.2 % per trip,
clipped to the urban GNSS band −0.4 … +5.5 % of docs/metrology.md), 15-25 trips a taxi a day and the planted faults of
`FleetSpec`: meters inflated by +2, +5 and +10 %, a pulse injector (×1.5 on 20 % of
trips), a 10 % fare overcharge, an unauthorised seal break (after one day) and one
meter that never applies a new tariff. The new tariff is rolled out half way (day
`days // 2`, 10:00 local) through `POST /api/tariffs/{v}/rollout` of the real API
(FastAPI TestClient over the same state and store: `SqliteState.save_tariff` with the
effective time (next local midnight) and deadline (+ rules' deadline_h)); the cmd/tariff
messages the API publishes are handed to `Fleet.push_tariff`.

Evaluation as of the end of each simulated day. A full `Evaluator.run` re-reads the
whole 60-day window (288 heartbeats a taxi a day) and re-judges it. Heartbeats come back
as columns (`TelemetryStore.columns`; the embedded store keeps full days as column
blocks) and are cut vectorised (`telling_points`): as of day 60 for 200 taxis
the heartbeat read takes ~0.7 s (9-12 s point by point before), a pass reusing the
previous pass's fare checks ~5-6 s (13-29 s before on the same shared 2-vCPU machine,
~14 s when idle), the first pass, which packs the days, ~22 s (~23-26 s before); 92 s
before heartbeats were cut to those that tell and fare checks were kept (bench/README.md,
`bench.taxi`). One run a day for 60 days would still take minutes per fleet, so the daily
figures come from `DailyMirror`: the same `evaluate_taxi.evaluate` the Evaluator's taxi half calls,
handed the window's stored points read back from the store incrementally (the last 2 h
of event time are re-read each day, so late and duplicate deliveries land as they do in
the store) instead of re-reading the window, with two exact shortcuts:

- each trip's `fare_check` is computed once (`FareCache`: reused while the
  tariff book and rules stay the same; all are recomputed when a rollout changes the book);
- heartbeats are kept only when seal, pulses_per_km or tariff_version change from the
  previous one of that meter: seal / parameter findings, their count and the rollout
  answers are the same, only a reason's wording ("N heartbeats", the heartbeat before a
  pulse-constant change) is not (`evaluate_taxi.load` also keeps the last heartbeat of
  every run and every broken-seal one, `telling_heartbeats`: exact).

On the `--check-days` (by default day 3 and the last day, which is always
checked) the real `Evaluator.run(as_of, book, record=False)` runs as well and every
taxi's decision, state, new due date, reason rules and whole evidence dict are compared
with the mirror's; the agreement is printed (differences as MISMATCH lines), and the last
day's decisions and evidence shown are the real Evaluator's.

"Flagged" means a decision beyond keep/extend (resample or replace). The targets
(printed as PASS/MISS, never asserted): every planted fault flagged; no clean meter of
the tight fleet flagged. The script prints figures; it asserts nothing on timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from bench.common import map_spawned
from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.core.clock import format_ts
from monitor.core.decision import Decision, Stamp
from monitor.core.ports import MeterPoint
from monitor.core.registry import parse_rows
from monitor.core.rulebook import RuleBook, load_rules
from monitor.core.schema import TAXI_EVENT, TAXI_STATUS, TAXI_TRIP, Record
from monitor.evaluation.runner import Evaluator
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.simulate import MeterTruth as SimTruth
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from monitor.taxi import evaluate as evaluate_taxi
from monitor.taxi.fares import FareCache
from monitor.taxi.tariff import Tariff, TariffBook, load_tariffs
from monitor.taxi.trips import Trip, trips_from_points

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "config" / "rules.yaml"
TARIFFS_PATH = ROOT / "config" / "tariffs.yaml"
BASE_MS = 1772294400000  # 2026-03-01T00:00:00+08:00, a local midnight
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
WRITE_BATCH = 5000
FLAGGED = ("resample", "replace")
# The simulator delays a message by at most 4.5 intervals (67.5 min) plus a 2-min resend:
# re-reading the last 2 hours of event time each day catches every late arrival.
OVERLAP_MS = 2 * HOUR_MS
FAULTS = (
    "inflated_2pct",
    "inflated_5pct",
    "inflated_10pct",
    "pulse_injector",
    "overcharge",
    "seal_break",
    "stale_tariff",
)
NEW_VERSION = "SH-2026-03"
GNSS_BIAS_PCT = FleetSpec(start_ms=0).gnss_bias_pct


# =============================================================================
# What a run is and what it produced
# =============================================================================


@dataclass(frozen=True)
class FleetTask:
    """One fleet: its spread of meter biases and the run's size."""

    label: str
    bias_pct: tuple[float, float]
    taxis: int
    days: int
    seed: int
    check_days: tuple[int, ...]
    workdir: str

    @property
    def rollout_day(self) -> int:
        """The simulated day (1-based) the new tariff is rolled out on, at 10:00 local."""
        return max(1, self.days // 2)


@dataclass(frozen=True)
class DayVerdict:
    """One meter's decision as of the end of one day (from the mirror)."""

    decision: str
    state: str
    rules: tuple[str, ...]
    error_pct: float | None
    n_trips: int
    n_usable: int

    @property
    def flagged(self) -> bool:
        """Beyond keep/extend."""
        return self.decision in FLAGGED


@dataclass(frozen=True)
class CheckResult:
    """The real Evaluator.run on one day, against the mirror."""

    day: int
    seconds: float
    meters: int
    agree: int
    mismatches: tuple[str, ...]


@dataclass(frozen=True)
class MeterTruth:
    """What the simulator planted in one taxi meter."""

    meter: str
    faults: tuple[str, ...]
    error_pct: float  # true distance error against true distance
    rel_pct: float  # the same relative to the fleet's median meter (what δ estimates)
    onset_ms: int | None  # when the planted fault began to act (None: clean)


@dataclass(frozen=True)
class Bands:
    """The distance thresholds of rules.yaml the report sorts meters by."""

    guard_high_pct: float
    limit_high_pct: float
    window_trips: int


@dataclass
class FleetRun:
    """Everything one fleet produced, in plain data (it crosses process boundaries)."""

    task: FleetTask
    messages: int = 0
    records: int = 0
    rejected: int = 0
    trips_stored: int = 0
    heartbeats_stored: int = 0
    heartbeats_kept: int = 0
    ingest_s: float = 0.0
    mirror_s: float = 0.0
    peak_rss_mb: float = 0.0
    rollout: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, MeterTruth] = field(default_factory=dict)
    verdicts: dict[str, list[DayVerdict]] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # real Evaluator, last day
    trip_ends: dict[str, list[int]] = field(default_factory=dict)  # planted meters only


# =============================================================================
# The taxi half of an evaluation pass, fed incrementally
# =============================================================================


def _status_signature(point: MeterPoint) -> tuple[object, object, object]:
    values = point.values
    return values.get("seal"), values.get("pulses_per_km"), values.get("tariff_version")


def _forget_before(seen: dict[Any, int], horizon_ms: int) -> None:
    for key in [k for k, ts in seen.items() if ts < horizon_ms]:
        del seen[key]


class DailyMirror:
    """`evaluate_taxi.decide_taxis` over the stored points, read back day by day.

    See the module docstring for the shortcuts and why they leave decisions unchanged.
    """

    def __init__(
        self,
        store: EmbeddedStore,
        state: SqliteState,
        config_tariffs: TariffBook,
        book: RuleBook,
        start_ms: int,
    ) -> None:
        """Nothing read yet; points from `start_ms` on will be."""
        self._store = store
        self._state = state
        self._config = config_tariffs
        self._book = book
        self._read_until = start_ms - 1
        self._fares = FareCache()
        self._seen_trips: dict[tuple[str, str], int] = {}
        self._seen_status: dict[tuple[str, int], int] = {}
        self._seen_events: dict[tuple[str, int, str], int] = {}
        self._last_signature: dict[str, tuple[object, object, object]] = {}
        self.trips: dict[str, list[Trip]] = {}
        self._status: dict[str, list[MeterPoint]] = {}
        self._events: dict[str, list[MeterPoint]] = {}
        self.heartbeats_read = 0
        self.heartbeats_kept = 0

    def pull(self, until_ms: int) -> None:
        """Read what the store holds up to `until_ms` that was not read before."""
        low = self._read_until - OVERLAP_MS + 1
        fresh: dict[str, list[MeterPoint]] = {}
        for p in self._store.points(TAXI_TRIP, low, until_ms):
            trip_key = (p.meter, str(p.values.get("trip_id")))
            if trip_key not in self._seen_trips:
                self._seen_trips[trip_key] = p.ts_ms
                fresh.setdefault(p.meter, []).append(p)
        for meter, points in fresh.items():
            trips = self.trips.setdefault(meter, [])
            trips.extend(trips_from_points(points))
            trips.sort(key=lambda t: (t.end_ms, t.trip_id))  # the order the store returns
        for p in self._store.points(TAXI_STATUS, low, until_ms):
            status_key = (p.meter, p.ts_ms)
            if status_key in self._seen_status:
                continue
            self._seen_status[status_key] = p.ts_ms
            self.heartbeats_read += 1
            signature = _status_signature(p)
            if self._last_signature.get(p.meter) != signature:
                self._last_signature[p.meter] = signature
                self._status.setdefault(p.meter, []).append(p)
                self.heartbeats_kept += 1
        for p in self._store.points(TAXI_EVENT, low, until_ms):
            event_key = (p.meter, p.ts_ms, str(p.values.get("code")))
            if event_key not in self._seen_events:
                self._seen_events[event_key] = p.ts_ms
                self._events.setdefault(p.meter, []).append(p)
        # Keys older than the next read's overlap can never come back.
        horizon = until_ms - OVERLAP_MS
        _forget_before(self._seen_trips, horizon)
        _forget_before(self._seen_status, horizon)
        _forget_before(self._seen_events, horizon)
        self._read_until = until_ms

    def decide(self, as_of_ms: int) -> dict[str, Decision]:
        """Every taxi meter's decision as of `as_of_ms` (the data pulled so far).

        The window's points as `evaluate_taxi.load` would read them, handed to
        `evaluate_taxi.evaluate`: the Evaluator's own taxi half, with the fare checks
        carried over from the previous day (`FareCache`).
        """
        rules = self._book.rules.taxi
        start = evaluate_taxi.window_start(as_of_ms, rules)
        trips = {
            m: kept
            for m, ts in self.trips.items()
            if (kept := [t for t in ts if start <= t.end_ms <= as_of_ms])
        }
        status = {
            m: beats
            for m, ps in self._status.items()
            if (beats := [p for p in ps if start <= p.ts_ms <= as_of_ms])
        }
        events = {
            m: codes
            for m, ps in self._events.items()
            if (codes := [p for p in ps if start <= p.ts_ms <= as_of_ms])
        }
        data = evaluate_taxi.TaxiData(trips, status, events, {})
        stamp = Stamp(format_ts(as_of_ms), self._book.version)
        return evaluate_taxi.evaluate(
            self._store, self._state, self._config, rules, as_of_ms, stamp, data, self._fares
        )


def _verdict(d: Decision) -> DayVerdict:
    ev = d.evidence
    error = ev.get("error_pct")
    return DayVerdict(
        decision=d.decision,
        state=d.state,
        rules=tuple(r.rule for r in d.reasons),
        error_pct=float(error) if error is not None else None,
        n_trips=int(ev.get("n_trips_total") or 0),
        n_usable=int(ev.get("n_trips_usable") or 0),
    )


def _comparable(d: Decision) -> tuple[object, ...]:
    return (
        d.decision,
        d.state,
        d.new_due_on,
        tuple(sorted({r.rule for r in d.reasons})),
        json.dumps(d.evidence, sort_keys=True),
    )


def _difference(ours: Decision, real: Decision) -> str:
    """What differs between two decisions of one meter, in a few words."""
    parts = []
    for name, a, b in zip(
        ("decision", "state", "new_due_on", "rules"),
        _comparable(real)[:4],
        _comparable(ours)[:4],
        strict=True,
    ):
        if a != b:
            parts.append(f"{name} {a} / {b}")
    keys = sorted(set(real.evidence) | set(ours.evidence))
    parts += [
        f"evidence.{k} {real.evidence.get(k)!r} / {ours.evidence.get(k)!r}"
        for k in keys
        if real.evidence.get(k) != ours.evidence.get(k)
    ]
    return "; ".join(parts) + " (Evaluator / mirror)"


def compare(
    day: int, seconds: float, mirror: dict[str, Decision], real: dict[str, Decision]
) -> CheckResult:
    """Per taxi: decision, state, reason rules and the whole evidence, mirror vs Evaluator.run."""
    taxis = sorted(m for m, d in real.items() if d.kind == "taxi")
    bad = []
    for meter in taxis:
        ours = mirror.get(meter)
        if ours is None:
            bad.append(f"{meter}: missing in the mirror")
        elif _comparable(ours) != _comparable(real[meter]):
            bad.append(f"{meter}: {_difference(ours, real[meter])}")
    agree = len(taxis) - len(bad)
    bad += [f"{m}: only in the mirror" for m in sorted(set(mirror) - set(taxis))]
    return CheckResult(day, seconds, len(taxis), agree, tuple(bad))


# =============================================================================
# One fleet through the real path
# =============================================================================


class Ingest:
    """Simulator messages → parse_message → EmbeddedStore + seen meters, in batches."""

    def __init__(
        self, fleet: Fleet, store: EmbeddedStore, state: SqliteState, run: FleetRun
    ) -> None:
        """Count into `run`."""
        self.fleet, self.store, self.state, self.run = fleet, store, state, run

    def __call__(self, start_ms: int, end_ms: int) -> None:
        """Everything the fleet publishes in [start_ms, end_ms)."""
        t0 = time.perf_counter()
        batch: list[Record] = []
        for message in self.fleet.messages(start_ms, end_ms):
            self.run.messages += 1
            parsed = parse_message(message.topic, message.payload)
            if isinstance(parsed, Record):
                batch.append(parsed)
                if len(batch) >= WRITE_BATCH:
                    self._flush(batch)
            elif parsed is not None:
                self.run.rejected += 1
        if batch:
            self._flush(batch)
        self.run.ingest_s += time.perf_counter() - t0

    def _flush(self, batch: list[Record]) -> None:
        self.store.write(batch)
        self.state.note_seen(summarise_seen(batch, time.time()))
        self.run.records += len(batch)
        batch.clear()


def new_tariff_body(config: TariffBook, effective_ms: int, tz: tzinfo) -> dict[str, Any]:
    """The tariff rolled out half way: SH-2022 with dearer flag falls and per-km rates."""
    body: dict[str, Any] = config["SH-2022"].model_dump(mode="json")
    local = datetime.fromtimestamp(effective_ms / 1000, tz)
    body["effective_from"] = local.isoformat(timespec="seconds")
    body["day"] = {**body["day"], "flag_fall": 15.0, "per_km": 2.9}
    body["night"] = {**body["night"], "flag_fall": 19.0, "per_km": 3.8}
    return body


def _planted_onset(facts: SimTruth, start_ms: int, effective_ms: int) -> int | None:
    faults = facts["faults"]
    if not faults:
        return None
    seal_break_ms = facts.get("seal_break_ms")
    if "seal_break" in faults and seal_break_ms is not None:
        return seal_break_ms
    if "stale_tariff" in faults:
        return effective_ms  # it charges the old fare from the new tariff's effective time
    return start_ms


def run_fleet(task: FleetTask) -> FleetRun:
    """Simulate, ingest day by day, roll out a tariff half way, evaluate every day."""
    workdir = Path(task.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    book = load_rules(RULES_PATH)
    tariffs = load_tariffs(TARIFFS_PATH)
    spec = FleetSpec(
        start_ms=BASE_MS, seed=task.seed, districts=0, taxis=task.taxis, taxi_bias_pct=task.bias_pct
    )
    fleet = Fleet(spec, tariffs)
    # synchronous=OFF on tmpfs: durability is not under test, the rules are.
    store = EmbeddedStore(workdir / "telemetry.sqlite", Metrics(), synchronous="OFF")
    state = SqliteState(workdir / "state.sqlite")
    parsed = parse_rows(fleet.registry_rows())
    if parsed.errors:
        raise RuntimeError(f"simulated registry refused: {parsed.errors[:3]}")
    state.upsert_meters(parsed.rows)
    run = FleetRun(task)
    ingest = Ingest(fleet, store, state, run)
    evaluator = Evaluator(store, state, tariffs=lambda: tariffs)
    mirror = DailyMirror(store, state, tariffs, book, BASE_MS)

    sent: list[tuple[str, bytes, bool]] = []
    ctx = ApiContext(
        load_settings(workdir / "no-config", {}),
        state,
        store,
        Metrics(),
        lambda: True,
        evaluator,
        lambda: book,
        lambda topic, payload, retain: sent.append((topic, payload, retain)),
    )
    with warnings.catch_warnings():
        # Starlette's notice that its test client will move from httpx to httpx2.
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(ctx))
    rollout_at = BASE_MS + (task.rollout_day - 1) * DAY_MS + 10 * HOUR_MS
    effective = BASE_MS + task.rollout_day * DAY_MS  # the next local midnight
    body = new_tariff_body(tariffs, effective, spec.tz)

    checks = set(task.check_days) | {task.days}
    for day in range(1, task.days + 1):
        a, b = BASE_MS + (day - 1) * DAY_MS, BASE_MS + day * DAY_MS
        if day == task.rollout_day:
            ingest(a, rollout_at)
            response = client.post(f"/api/tariffs/{NEW_VERSION}/rollout", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"rollout refused: {response.status_code} {response.text}")
            answer = response.json()
            targets = [topic.split("/")[2] for topic, _, _ in sent]
            command = json.loads(sent[0][1])
            fleet.push_tariff(
                command["version"], Tariff.model_validate(command["tariff"]), rollout_at, targets
            )
            run.rollout = {
                "version": NEW_VERSION,
                "posted_ms": rollout_at,
                "effective": answer["effective_from"],
                "deadline": answer["deadline"],
                "targeted": answer["targeted"],
                "commands": len(sent),
                "retained": all(retain for _, _, retain in sent),
            }
            ingest(rollout_at, b)
        else:
            ingest(a, b)
        as_of = b - 1
        t0 = time.perf_counter()
        mirror.pull(as_of)
        decided = mirror.decide(as_of)
        run.mirror_s += time.perf_counter() - t0
        for meter, d in decided.items():
            run.verdicts.setdefault(meter, []).append(_verdict(d))
        if run.rollout and day == min(task.days, task.rollout_day + 2):
            # GET /api/tariffs/{v} re-reads heartbeats since the day before the effective
            # time: asked once, the first day the deadline has passed.
            progress = client.get(f"/api/tariffs/{NEW_VERSION}", params={"as_of": str(as_of)})
            answered = progress.json()
            run.rollout |= {
                "progress_as_of": as_of,
                "applied": answered["applied"],
                "pending": answered["pending"],
                "overdue": answered["overdue"],
                "overdue_meters": [
                    r["meter"] for r in answered["meters"] if r["status"] == "overdue"
                ],
            }
        if day in checks:
            t0 = time.perf_counter()
            real = evaluator.run(as_of, book, record=False)
            seconds = time.perf_counter() - t0
            run.checks.append(compare(day, seconds, decided, real.meters))
            if day == task.days:
                run.final = {m: d.as_dict() for m, d in real.meters.items() if d.kind == "taxi"}
    truth = fleet.truth()
    logs = {m: math.log1p(t["error_pct"] / 100) for m, t in truth.items()}
    centre = statistics.median(logs.values())
    for meter, facts in truth.items():
        onset = _planted_onset(facts, BASE_MS, effective)
        run.truth[meter] = MeterTruth(
            meter,
            tuple(facts["faults"]),
            facts["error_pct"],
            100 * math.expm1(logs[meter] - centre),
            onset,
        )
        if onset is not None:
            run.trip_ends[meter] = sorted(t.end_ms for t in mirror.trips.get(meter, []))
    run.trips_stored = sum(len(t) for t in mirror.trips.values())
    run.heartbeats_stored = mirror.heartbeats_read
    run.heartbeats_kept = mirror.heartbeats_kept
    store.close()
    state.close()
    shutil.rmtree(workdir, ignore_errors=True)
    run.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return run


# =============================================================================
# Reporting
# =============================================================================


def _day_of(ms: int) -> str:
    """Simulated day (1-based) and local time of an instant."""
    day = (ms - BASE_MS) // DAY_MS + 1
    local = datetime.fromtimestamp(ms / 1000, FleetSpec(start_ms=0).tz)
    return f"day {day} {local:%H:%M}"


def _clean(run: FleetRun) -> list[str]:
    return sorted(m for m, t in run.truth.items() if not t.faults)


def _planted(run: FleetRun, fault: str) -> list[str]:
    return sorted(m for m, t in run.truth.items() if fault in t.faults)


def _first_flag(verdicts: Sequence[DayVerdict]) -> int | None:
    return next((i for i, v in enumerate(verdicts) if v.flagged), None)


def _trips_between(ends: list[int], low_ms: int, high_ms: int) -> int:
    return bisect_right(ends, high_ms) - bisect_left(ends, low_ms)


def _rules_first_seen(verdicts: Sequence[DayVerdict]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, v in enumerate(verdicts):
        if v.flagged:
            for rule in v.rules:
                first.setdefault(rule, i + 1)
    return first


def _fmt_pct(value: Any) -> str:
    return "—" if value is None else f"{float(value):+.2f} %"


def _evidence_line(d: dict[str, Any]) -> str:
    ev = d["evidence"]
    ci = ev.get("error_ci_pct")
    ci_text = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    cusum = ev.get("cusum") or {}
    alarm = (
        f"alarm {cusum.get('direction')} at usable trip #{cusum.get('alarm_index')}"
        if cusum.get("alarm")
        else "no alarm"
    )
    return (
        f"δ {_fmt_pct(ev.get('error_pct'))}{ci_text} over {ev.get('n_trips')} trips "
        f"({ev.get('n_trips_usable')} usable of {ev.get('n_trips_total')}); "
        f"suspect/gross trips {ev.get('suspect_trips')}/{ev.get('gross_trips')} "
        f"({ev.get('gross_trips_30d')} gross in 30 d); CUSUM {alarm} (peak {cusum.get('peak')}); "
        f"fares {ev.get('fare_mismatches')}/{ev.get('fare_checked')} mismatched "
        f"(mean {ev.get('fare_mean_diff_cny'):+.2f} CNY, systematic {ev.get('fare_systematic')}), "
        f"{ev.get('tariff_version_mismatches')} priced under a stale version; "
        f"seal findings {ev.get('seal_findings')}"
    )


def report_setup(run: FleetRun, bands: Bands) -> None:
    """The fleet, the ingest and the rollout in numbers."""
    task = run.task
    clean = _clean(run)
    rel = [run.truth[m].rel_pct for m in clean]
    print(
        f"--- fleet '{task.label}': {task.taxis} taxis, {task.days} days, seed {task.seed}, "
        f"taxi_bias_pct {task.bias_pct} (mean, sd %), GNSS bias {GNSS_BIAS_PCT:+g} % shared ---"
    )
    print(
        f"ingest: {run.messages:,} messages → {run.records:,} records ({run.rejected} rejected), "
        f"{run.trips_stored:,} trips, {run.heartbeats_stored:,} heartbeats "
        f"({run.heartbeats_kept:,} kept by the mirror); {run.ingest_s:.0f} s"
    )
    if run.rollout:
        r = run.rollout
        print(
            f"rollout: POST /api/tariffs/{r['version']}/rollout at {_day_of(r['posted_ms'])} → "
            f"{r['targeted']} meters targeted, {r['commands']} cmd/tariff published "
            f"(retained: {r['retained']}); effective {r['effective']}, deadline {r['deadline']}; "
            f"GET /api/tariffs/{r['version']} as of {_day_of(r['progress_as_of'])}: applied {r.get('applied')}, pending {r.get('pending')}, "
            f"overdue {r.get('overdue')} {r.get('overdue_meters')}"
        )
    guard, limit = bands.guard_high_pct, bands.limit_high_pct
    inside = sum(1 for v in rel if v <= guard)
    between = sum(1 for v in rel if guard < v <= limit)
    beyond = sum(1 for v in rel if v > limit)
    absolute = sum(1 for m in clean if run.truth[m].error_pct > limit)
    print(
        f"clean meters: {len(clean)}; true error relative to the fleet median meter: "
        f"sd {statistics.pstdev(rel):.2f} pp, range [{min(rel):+.2f}, {max(rel):+.2f}] %; "
        f"{inside} inside the +{guard:g} % guard band, {between} between +{guard:g} and "
        f"+{limit:g} %, {beyond} beyond JJG 517's +{limit:g} %; {absolute} have a true absolute "
        f"error > +{limit:g} % (not visible to δ: the fleet median absorbs the fleet's mean bias "
        f"together with the GNSS bias)"
    )
    checks = ", ".join(
        f"day {c.day}: {c.agree}/{c.meters} agree ({c.seconds:.1f} s)" for c in run.checks
    )
    print(
        f"mirror vs Evaluator.run(record=False): {checks}; mirror total {run.mirror_s:.0f} s; "
        f"peak RSS of the process {run.peak_rss_mb:,.0f} MB"
    )
    for c in run.checks:
        for line in c.mismatches[:5]:
            print(f"  MISMATCH day {c.day} {line}")


def report_faults(run: FleetRun) -> bool:
    """Per planted fault: first flag (day, trips, rules) and the last day's decision."""
    days = run.task.days
    everything = True
    for fault in FAULTS:
        meters = _planted(run, fault)
        if not meters:
            print(f"{fault:15s} not planted (too few taxis)")
            everything = False
            continue
        for meter in meters:
            truth = run.truth[meter]
            verdicts = run.verdicts.get(meter, [])
            ends = run.trip_ends.get(meter, [])
            onset = truth.onset_ms if truth.onset_ms is not None else BASE_MS
            first = _first_flag(verdicts)
            head = (
                f"{fault:15s} {meter} true {truth.error_pct:+.2f} % (rel. {truth.rel_pct:+.2f} %)"
            )
            if first is None:
                everything = False
                print(f"{head}: NOT FLAGGED in {days} days")
            else:
                v = verdicts[first]
                as_of = BASE_MS + (first + 1) * DAY_MS - 1
                since = _trips_between(ends, onset, as_of)
                flagged_days = sum(1 for x in verdicts[first:] if x.flagged)
                seen = _rules_first_seen(verdicts)
                later = ", ".join(f"{r} d{d}" for r, d in seen.items() if d > first + 1)
                print(
                    f"{head}: first flagged day {first + 1} → {v.decision}/{v.state} by "
                    f"{', '.join(v.rules)}; {v.n_trips} trips ({v.n_usable} usable), "
                    f"{since} since onset {_day_of(onset)}; flagged {flagged_days}/{days - first} "
                    f"days since" + (f"; later rules: {later}" if later else "")
                )
            d = run.final.get(meter)
            if d is not None:
                rules = ", ".join(r["rule"] for r in d["reasons"])
                print(
                    f"    day {days}: {d['decision']}/{d['state']} ({rules}); {_evidence_line(d)}"
                )
    return everything


def _daily_share(run: FleetRun, clean: list[str], day: int) -> tuple[int, int]:
    flagged = sum(1 for m in clean if run.verdicts[m][day].flagged)
    return flagged, len(clean)


def report_daily(runs: Sequence[FleetRun]) -> None:
    """Per day, per fleet: clean meters flagged (and how many ever), planted faults flagged."""
    cleans = [_clean(r) for r in runs]
    planted = [[m for m, t in r.truth.items() if t.faults] for r in runs]
    head = " | ".join(f"{r.task.label:^34s}" for r in runs)
    sub = " | ".join(f"{'clean flagged':>15s} {'ever':>5s} {'faults':>12s}" for _ in runs)
    print(f"{'':>4s} | {head}")
    print(f"{'day':>4s} | {sub}")
    ever: list[set[str]] = [set() for _ in runs]
    for day in range(runs[0].task.days):
        cells = []
        for i, run in enumerate(runs):
            flagged, n = _daily_share(run, cleans[i], day)
            ever[i] |= {m for m in cleans[i] if run.verdicts[m][day].flagged}
            faults = sum(1 for m in planted[i] if run.verdicts[m][day].flagged)
            share = 100 * flagged / n if n else 0.0
            cells.append(
                f"{flagged:>4d}/{n:<3d} {share:5.1f} % {len(ever[i]):>5d} "
                f"{faults:>5d}/{len(planted[i]):<6d}"
            )
        print(f"{day + 1:>4d} | " + " | ".join(cells))


def report_clean(run: FleetRun, bands: Bands) -> bool:
    """Over all days: clean meters ever flagged, meter-days flagged, by rule and by truth."""
    clean = _clean(run)
    days = run.task.days
    ever = [m for m in clean if any(v.flagged for v in run.verdicts[m])]
    meter_days = sum(1 for m in clean for v in run.verdicts[m] if v.flagged)
    last = [m for m in clean if run.verdicts[m][-1].flagged]
    print(
        f"'{run.task.label}': {len(ever)}/{len(clean)} clean meters flagged at least once "
        f"({100 * len(ever) / len(clean):.1f} %), {meter_days}/{len(clean) * days} meter-days "
        f"flagged ({100 * meter_days / (len(clean) * days):.2f} % = the mean daily share), "
        f"{len(last)} flagged on day {days}"
    )
    by_rule: Counter[str] = Counter()
    for m in ever:
        by_rule.update({r for v in run.verdicts[m] if v.flagged for r in v.rules})
    if by_rule:
        print("  ever flagged, by rule: " + ", ".join(f"{r} {n}" for r, n in by_rule.most_common()))
    guard, limit = bands.guard_high_pct, bands.limit_high_pct
    bins = (
        (f"rel. ≤ +{guard:g} % (inside guard)", -math.inf, guard),
        (f"+{guard:g} … +{limit:g} % (guard band)", guard, limit),
        (f"> +{limit:g} % (beyond JJG 517)", limit, math.inf),
    )
    for name, low, high in bins:
        group = [m for m in clean if low < run.truth[m].rel_pct <= high]
        if not group:
            continue
        n_ever = sum(1 for m in group if m in ever)
        n_last = sum(1 for m in group if m in last)
        days_flagged = sum(1 for m in group for v in run.verdicts[m] if v.flagged)
        print(
            f"  true error {name:30s}: {len(group):>4d} meters, {n_ever:>3d} ever flagged, "
            f"{n_last:>3d} on day {days}, {100 * days_flagged / (len(group) * days):5.1f} % of "
            f"meter-days"
        )
    worst = sorted(ever, key=lambda m: -sum(v.flagged for v in run.verdicts[m]))[:8]
    for m in worst:
        flags = "".join("X" if v.flagged else "." for v in run.verdicts[m])
        errs = [v.error_pct for v in run.verdicts[m] if v.error_pct is not None]
        rng = f"δ {min(errs):+.2f} … {max(errs):+.2f} %" if errs else "δ —"
        print(
            f"  {m} true rel. {run.truth[m].rel_pct:+.2f} % ({rng}): {flags} "
            f"({', '.join(sorted({r for v in run.verdicts[m] if v.flagged for r in v.rules}))})"
        )
    inside = [m for m in clean if run.truth[m].rel_pct <= guard]
    false_alarms = sum(1 for m in inside if m in ever)
    judged = [v for m in inside for v in run.verdicts[m] if v.state != "unknown"]
    few = [v for v in judged if v.n_usable < bands.window_trips]
    full = [v for v in judged if v.n_usable >= bands.window_trips]
    if judged:
        print(
            f"  false alarms (clean, true rel. ≤ +{guard:g} %) by the trips δ rested on: "
            f"{sum(v.flagged for v in few)}/{len(few)} meter-days while δ had < "
            f"{bands.window_trips} usable trips ({_share(few)}), {sum(v.flagged for v in full)}/"
            f"{len(full)} with the full {bands.window_trips} ({_share(full)})"
        )
    alarmed = sorted(run.truth[m].rel_pct for m in inside if m in ever)
    quiet = [run.truth[m].rel_pct for m in inside if m not in ever]
    if alarmed and quiet:
        print(
            f"  the {len(alarmed)} falsely flagged meters have true rel. errors "
            f"{alarmed[0]:+.2f} … {alarmed[-1]:+.2f} % (median {statistics.median(alarmed):+.2f} %); "
            f"the {len(quiet)} never flagged ones {min(quiet):+.2f} … {max(quiet):+.2f} % "
            f"(median {statistics.median(quiet):+.2f} %)"
        )
    if run.final:
        report_accuracy(run, clean)
    return not ever if run.task.label == "tight" else false_alarms == 0


def _share(verdicts: Sequence[DayVerdict]) -> str:
    if not verdicts:
        return "—"
    return f"{100 * sum(v.flagged for v in verdicts) / len(verdicts):.1f} %"


def report_accuracy(run: FleetRun, clean: list[str]) -> None:
    """The last day's δ (real Evaluator) against the true error relative to the fleet."""
    diffs, covered, n = [], 0, 0
    for m in clean:
        ev = run.final[m]["evidence"]
        if ev.get("error_pct") is None or ev.get("error_ci_pct") is None:
            continue
        n += 1
        truth = run.truth[m].rel_pct
        diffs.append(abs(float(ev["error_pct"]) - truth))
        low, high = ev["error_ci_pct"]
        covered += low <= truth <= high
    if n:
        print(
            f"  day {run.task.days} δ vs true relative error (clean meters): median |diff| "
            f"{statistics.median(diffs):.2f} pp, max {max(diffs):.2f} pp, 95 % interval covers "
            f"the truth for {covered}/{n} ({100 * covered / n:.0f} %)"
        )


def explain(runs: Sequence[FleetRun], bands: Bands) -> None:
    """Why the two clean fleets differ."""
    guard, limit = bands.guard_high_pct, bands.limit_high_pct
    print()
    print("Why the two fleets differ:")
    print(
        "  δ is a meter's median ln(meter_km/gps_km) over its last "
        f"{bands.window_trips} usable trips minus the fleet median, so\n"
        "  it measures each meter against the fleet's median meter, not against true distance:\n"
        f"  the shared GNSS bias (+{GNSS_BIAS_PCT:g} %) and the fleet's mean meter bias both "
        "cancel."
    )
    for run in runs:
        mean, sd = run.task.bias_pct
        rel = [run.truth[m].rel_pct for m in _clean(run)]
        above = sum(1 for v in rel if v > guard)
        beyond = sum(1 for v in rel if v > limit)
        print(
            f"  '{run.task.label}' (taxi_bias_pct ({mean:g}, {sd:g})): meters differ by {sd:g} % "
            f"(1 sd); guard band exit needs a {guard / sd:.1f}-sd meter, JJG 517's limit a "
            f"{limit / sd:.1f}-sd one; here {above}/{len(rel)} clean meters are above +{guard:g} % "
            f"and {beyond} above +{limit:g} % relative to the fleet."
        )
    print(
        "  Meters above the guard band are *meant* to be sent to verification (resample) and\n"
        "  those beyond the limit with confidence replaced (docs/metrology.md): in the default spread\n"
        "  most flags of 'clean' meters are such genuine meters, not false alarms. The false\n"
        f"  alarms are the flags of meters whose true relative error is inside +{guard:g} % (the\n"
        "  'inside guard' rows): in the tight fleet nearly every clean meter is one, so there any\n"
        "  flag counts against the target of 0."
    )


def scratch_dir(prefix: str) -> Path:
    """A temporary directory, on tmpfs (/dev/shm) when there is one: no disk I/O waits."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _check_days(text: str, days: int) -> tuple[int, ...]:
    if text == "all":
        return tuple(range(1, days + 1))
    if text == "default":
        return tuple(sorted({min(3, days), days}))
    out = {int(part) for part in text.split(",") if part.strip()}
    if not all(1 <= d <= days for d in out):
        raise ValueError(f"check days must lie in 1..{days}")
    return tuple(sorted(out | {days}))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, run both fleets (in parallel), print."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.taxi", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--taxis", type=int, default=None, help="taxis per fleet (default 200)")
    parser.add_argument("--days", type=int, default=None, help="simulated days (default 60)")
    parser.add_argument("--quick", action="store_true", help="60 taxis × 20 days")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--tight-sd", type=float, default=0.2, help="sd %% of the tight fleet")
    parser.add_argument("--processes", type=int, default=2, help="fleets run in parallel")
    parser.add_argument(
        "--check-days",
        default="default",
        help="days to run the real Evaluator.run as well: 'default' (3 and the last), "
        "'all', or a comma list; the last day is always checked",
    )
    args = parser.parse_args(argv)
    taxis = args.taxis or (60 if args.quick else 200)
    days = args.days or (20 if args.quick else 60)
    book = load_rules(RULES_PATH)  # refuse to start on a rules file that does not load
    distance = book.rules.taxi.distance
    bands = Bands(distance.guard_high_pct, distance.limit_high_pct, distance.window_trips)
    window = int(distance.window_days)
    if not 2 <= days <= window:
        parser.error(f"--days must lie in 2..{window} (the rules' taxi window)")
    if taxis < len(FAULTS):
        parser.error(f"--taxis must be at least {len(FAULTS)} (one per planted fault)")
    try:
        checks = _check_days(args.check_days, days)
    except ValueError as exc:
        parser.error(f"--check-days: {exc}")
    print(
        f"bench.taxi — Python {platform.python_version()}, {os.cpu_count()} CPUs, rules "
        f"{RULES_PATH.relative_to(ROOT)} ({book.version}), tariffs "
        f"{TARIFFS_PATH.relative_to(ROOT)} {list(load_tariffs(TARIFFS_PATH))} + {NEW_VERSION} "
        f"rolled out on day {max(1, days // 2)}"
    )
    print(
        "path: simulator → parse_message → EmbeddedStore → SqliteState; daily decisions from "
        f"the mirror of Evaluator's taxi half, Evaluator.run(record=False) on days {list(checks)}"
    )
    tmp = scratch_dir("bench-taxi-")
    default_bias = FleetSpec(start_ms=0).taxi_bias_pct
    tasks = [
        FleetTask("default spread", default_bias, taxis, days, args.seed, checks, str(tmp / "a")),
        FleetTask(
            "tight",
            (default_bias[0], args.tight_sd),
            taxis,
            days,
            args.seed,
            checks,
            str(tmp / "b"),
        ),
    ]
    t0 = time.perf_counter()
    try:
        workers = max(1, min(args.processes, len(tasks)))
        runs = map_spawned(run_fleet, tasks, workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0

    for run in runs:
        print()
        report_setup(run, bands)
    verdict_faults = []
    for run in runs:
        print()
        print(
            f"=== planted faults, fleet '{run.task.label}' (first flag = first day beyond keep/extend) ==="
        )
        verdict_faults.append(report_faults(run))
    print()
    print("=== clean meters flagged beyond keep/extend, per day (as of 23:59:59.999 local) ===")
    report_daily(runs)
    print()
    print(f"=== clean meters over the {days} days ===")
    verdict_clean = [report_clean(run, bands) for run in runs]
    explain(runs, bands)
    print()
    for run, faults_ok, clean_ok in zip(runs, verdict_faults, verdict_clean, strict=True):
        what = (
            "no clean meter flagged"
            if run.task.label == "tight"
            else "no clean meter inside the guard band flagged"
        )
        print(
            f"target '{run.task.label}': every planted fault flagged — "
            f"{'PASS' if faults_ok else 'MISS'}; {what} — {'PASS' if clean_ok else 'MISS'}"
        )
    print(f"wall time {wall:.0f} s on {workers} process(es)")


if __name__ == "__main__":
    main()
