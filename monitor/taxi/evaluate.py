"""The taxi half of an evaluation pass: trips, heartbeats, events → meter decisions."""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from monitor.core.clock import DAY_MS, format_ts, ms_to_datetime
from monitor.core.decision import Decision, Finding, Reason, Stamp, decide_meter
from monitor.core.ports import (
    DaySummaries,
    MeterPoint,
    Presence,
    Registry,
    TaxiLedger,
    TelemetryStore,
)
from monitor.core.registry import MeterRow, add_years
from monitor.core.rulebook import Severity, TaxiRules
from monitor.core.schema import TAXI_EVENT, TAXI_STATUS, TAXI_TRIP
from monitor.taxi.days import by_meter, event_order, load_taxi_days
from monitor.taxi.distance import extendable, fleet_median, fleet_sigma, log_ratios
from monitor.taxi.fares import FareCache
from monitor.taxi.findings import taxi_findings
from monitor.taxi.rollout import Rollout, applied_at, progress
from monitor.taxi.seals import HEARTBEAT_FIELDS, telling_points
from monitor.taxi.tariff import TariffBook
from monitor.taxi.trips import Trip, WorkOrder, trips_from_points, unique_trips


class TaxiState(Registry, Presence, TaxiLedger, Protocol):
    """The state roles the taxi half of a pass reads: the fleet, who reported, the ledger."""


@dataclass(frozen=True)
class TaxiData:
    """Everything the taxi rules read, as of one time, grouped by meter."""

    trips: dict[str, list[Trip]]
    status: dict[str, list[MeterPoint]]
    events: dict[str, list[MeterPoint]]
    work_orders: dict[str, list[WorkOrder]]


def taxi_meters(state: TaxiState) -> tuple[dict[str, MeterRow], list[str]]:
    """The taxi registry by meter, and every meter a pass decides: registered or seen."""
    registry = {r.meter_id: r for r in state.registry_rows("taxi")}
    return registry, sorted(set(registry) | set(state.all_seen("taxi")))


def _heartbeats(
    store: TelemetryStore, meters: Sequence[str], start_ms: int, as_of_ms: int
) -> dict[str, list[MeterPoint]]:
    """The heartbeats in [start, as_of] of `meters` that the rules can tell apart, with
    only the fields they read (`telling_points`, what `telling_heartbeats`
    keeps), meters without one left out.

    Read as columns (`TelemetryStore.columns`: numpy arrays, no object per heartbeat) and
    cut vectorised, meter by meter: only one meter's window is held at a time.
    """
    out = {}
    for meter in meters:
        read = store.columns(TAXI_STATUS, HEARTBEAT_FIELDS, start_ms, as_of_ms, meter)
        status = read.get(meter)
        if status is not None and (beats := telling_points(meter, status)):
            out[meter] = beats
    return out


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a window is read back.

    Reading builds millions of short-lived points, none in a reference cycle, and every
    few thousand allocations the collector would walk every live object — the fare
    checks kept between passes included: a third of a pass's time, for nothing. It is
    switched back on (if it was on) however the read ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load(
    store: TelemetryStore,
    state: TaxiState,
    start_ms: int,
    as_of_ms: int,
    meters: Sequence[str] | None = None,
    summaries: DaySummaries | None = None,
) -> TaxiData:
    """Read the window's taxi telemetry of `meters` (default: `taxi_meters`) and the work orders.

    Heartbeats — 288 a day per meter — are read as columns, only the fields the rules
    read, and cut to those that tell (`telling_points`): the decisions are
    those of every heartbeat, at a fraction of the memory and time. With `summaries`,
    the complete days no store marked since they were kept come from the day summaries
    (`taxi.days`); the data is the same either way, meters in sorted order.
    """
    if meters is None:
        meters = taxi_meters(state)[1]
    with _collector_paused():
        if summaries is None:
            status = _heartbeats(store, meters, start_ms, as_of_ms)
            points = by_meter(store.points(TAXI_TRIP, start_ms, as_of_ms))
            trips = {m: trips_from_points(ps) for m, ps in points.items()}
            events = {
                m: event_order(ps)
                for m, ps in by_meter(store.points(TAXI_EVENT, start_ms, as_of_ms)).items()
            }
        else:
            # Read before any day is: what a day read from now on holds (see DaySummaries).
            upto = summaries.mark_sequence()
            got, _ = load_taxi_days(store, summaries, meters, start_ms, as_of_ms, upto)
            status, events = got.status, got.events
            trips = {m: unique_trips(ts) for m, ts in got.trips.items()}
    orders: dict[str, list[WorkOrder]] = defaultdict(list)
    for _, meter, start, end, reason, _created in state.workorders(limit=1_000_000):
        orders[meter].append(WorkOrder(meter, start, end, reason))
    return TaxiData(trips, status, events, dict(orders))


def tariff_book(config: TariffBook, state: TaxiLedger) -> TariffBook:
    """Config tariffs plus every tariff rolled out through the API."""
    book = config
    rolled = TariffBook.from_bodies(state.tariff_bodies(), "rolled-out tariffs")
    for version, tariff in rolled.items():
        book = book.with_tariff(version, tariff)
    return book


def overdue_findings(
    state: TaxiLedger, data: TaxiData, as_of_ms: int, severity: Severity = "major"
) -> dict[str, list[Finding]]:
    """Meters that had not applied a rolled-out tariff by its deadline (at as_of).

    `severity` is the tariff rule's (`taxi.tariff.severity`)."""
    out: dict[str, list[Finding]] = defaultdict(list)
    for version in state.tariff_bodies():
        found = state.tariff(version)
        if found is None:
            continue
        _, eff, deadline, meters = found
        rollout = Rollout(version, eff, deadline, meters)
        seen = applied_at(
            version,
            [e for es in data.events.values() for e in es],
            [s for ss in data.status.values() for s in ss],
        )
        for row in progress(rollout, seen, as_of_ms):
            if row.status == "overdue":
                out[row.meter].append(
                    Finding(
                        "suspect",
                        Reason(
                            "taxi.tariff.overdue",
                            version,
                            format_ts(deadline),
                            "rolled-out tariff not applied by its deadline; trips are re-priced "
                            "under the tariff that should have applied",
                        ),
                        inspect=True,
                        rule_severity=severity,
                    )
                )
    return out


def extension(row: MeterRow | None, as_of_ms: int, rules: TaxiRules) -> date | None:
    """New due date when a clean meter's due date is within the horizon, else None."""
    if row is None or row.due_on is None:
        return None
    as_of = ms_to_datetime(as_of_ms).date()
    if row.due_on - as_of > timedelta(days=rules.extension.horizon_days):
        return None
    return add_years(row.due_on, rules.extension.extend_years)


def decide_taxis(
    meters: list[str],
    registry: dict[str, MeterRow],
    data: TaxiData,
    tariffs: TariffBook,
    rules: TaxiRules,
    state: TaxiState,
    as_of_ms: int,
    stamp: Stamp,
    fares: FareCache | None = None,
) -> dict[str, Decision]:
    """Decisions for every taxi meter.

    `fares` carries fare checks over from a previous pass (see `FareCache`);
    the decisions are the same with or without it.
    """
    if fares is not None:
        fares.new_pass()
    window = rules.distance.window_trips
    ratios = {m: log_ratios(t, rules.distance).log_ratio for m, t in data.trips.items()}
    median = fleet_median(ratios, window)
    sigma = fleet_sigma(ratios, window) if ratios else None
    overdue = overdue_findings(state, data, as_of_ms, rules.tariff.severity)
    out = {}
    for meter in meters:
        findings, evidence = taxi_findings(
            meter,
            data.trips.get(meter, []),
            median,
            sigma,
            data.status.get(meter, []),
            data.events.get(meter, []),
            data.work_orders.get(meter, []),
            tariffs,
            rules,
            as_of_ms,
            fares,
        )
        findings += overdue.get(meter, [])
        row = registry.get(meter)
        evidence = {
            **evidence,
            "registered": row is not None,
            "lot": row.lot if row else None,
        }
        out[meter] = decide_meter(
            meter,
            "taxi",
            findings,
            row.due_on if row else None,
            extension(row, as_of_ms, rules) if extendable(findings) else None,
            evidence,
            stamp,
        )
    return out


def window_start(as_of_ms: int, rules: TaxiRules) -> int:
    """The first event time a pass as of `as_of_ms` reads (the distance rule's window_days)."""
    return as_of_ms - int(rules.distance.window_days * DAY_MS)


def evaluate(
    store: TelemetryStore,
    state: TaxiState,
    config_tariffs: TariffBook,
    rules: TaxiRules,
    as_of_ms: int,
    stamp: Stamp,
    data: TaxiData | None = None,
    fares: FareCache | None = None,
    summaries: DaySummaries | None = None,
) -> dict[str, Decision]:
    """The taxi half of an evaluation pass: every registered or seen taxi meter's decision.

    `data` is what `load` reads for the window (`window_start` … as_of); a caller that keeps
    the same points by other means (a benchmark reading the store incrementally) passes
    them instead. `fares` carries fare checks over between passes (`FareCache`);
    `summaries`, the day summaries `load` reads complete days from (`taxi.days`).
    """
    registry, meters = taxi_meters(state)
    if not meters:
        return {}
    if data is None:
        data = load(store, state, window_start(as_of_ms, rules), as_of_ms, meters, summaries)
    tariffs = tariff_book(config_tariffs, state)
    return decide_taxis(meters, registry, data, tariffs, rules, state, as_of_ms, stamp, fares)
