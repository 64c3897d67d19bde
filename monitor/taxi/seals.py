"""Seals and parameters: events and heartbeats, excused only by an open work order."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from monitor.core.clock import format_ts
from monitor.core.decision import Finding, Reason
from monitor.core.ports import Columns, MeterPoint, Point, Series
from monitor.core.rulebook import SealRule, Severity
from monitor.taxi.trips import WorkOrder, optional_float

# pulses_per_km is a float field; a change smaller than this relative amount is float
# noise of the transport, not a parameter change.
PPK_REL_TOL = 1e-9


@dataclass(frozen=True)
class _Beat:
    ts_ms: int
    seal: str | None
    pulses_per_km: float | None


def _beats(meter: str, status: Series | Sequence[MeterPoint]) -> list[_Beat]:
    """Heartbeats of `meter`, oldest first, one per timestamp (duplicates dropped).

    A `Series` carries numeric columns only, so from it only pulses_per_km is known.
    """
    if isinstance(status, Series):
        ppk = status.values.get("pulses_per_km")
        beats = [
            _Beat(int(ts), None, optional_float(ppk[i]) if ppk is not None else None)
            for i, ts in enumerate(status.ts_ms.tolist())
        ]
    else:
        beats = [
            _Beat(
                p.ts_ms,
                str(p.values["seal"]) if p.values.get("seal") is not None else None,
                optional_float(p.values.get("pulses_per_km")),
            )
            for p in status
            if p.meter == meter
        ]
    beats.sort(key=lambda b: b.ts_ms)
    return [b for i, b in enumerate(beats) if i == 0 or b.ts_ms != beats[i - 1].ts_ms]


# What `seal_findings` and the rollout progress read of a heartbeat (`telling_heartbeats`).
HEARTBEAT_FIELDS = ("seal", "pulses_per_km", "tariff_version")
_AnyPoint = TypeVar("_AnyPoint", Point, MeterPoint)


def telling_heartbeats(beats: Sequence[_AnyPoint]) -> list[_AnyPoint]:
    """One meter's heartbeats cut to those the rules can tell apart from the whole series.

    A meter sends a heartbeat every few minutes and for weeks they all say the same.
    In time order, a run is a stretch of heartbeats with equal values (HEARTBEAT_FIELDS,
    all that `load` reads; any other field only cuts runs finer); kept are the first and
    the last of every run and every heartbeat with seal "broken". Every finding and
    answer is then the same as from all of them:

    - a broken-seal run is kept whole: its count, first and last time, and where the
      covering work order changes (`seal_findings`);
    - a pulse-constant change lies between the last heartbeat of one value and the first
      of the next: both ends of runs (`seal_findings`);
    - the first heartbeat naming a tariff version starts a run (`rollout.applied_at`).

    Oldest first (a stable sort, so heartbeats of equal time keep their order).
    """
    ordered = sorted(beats, key=lambda b: b.ts_ms)
    values: list[dict[str, Any]] = [b.values for b in ordered]
    # new[i]: heartbeat i starts a run (dicts compared in C, no tuple per heartbeat)
    new = [True, *(a != b for a, b in pairwise(values))]
    new.append(True)  # past the last heartbeat: the last one ends its run
    return [
        beat
        for i, beat in enumerate(ordered)
        if new[i] or new[i + 1] or _broken(values[i].get("seal"))
    ]


def telling_mask(status: Columns) -> NDArray[np.bool_]:
    """`telling_heartbeats` on columns: which heartbeats of one meter (in time order) tell.

    The same rule without a Python object per heartbeat: heartbeat i starts a run when a
    HEARTBEAT_FIELDS column differs from heartbeat i - 1 (text compared element by element,
    None = absent; numbers by value, NaN = absent and equal to another absent), ends one
    when i + 1 starts one; kept are the ends of runs and every seal "broken". Columns the
    status lacks count as absent throughout.
    """
    n = len(status.ts_ms)
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    if n > 1 and bool((status.ts_ms[1:] < status.ts_ms[:-1]).any()):
        raise ValueError("heartbeats not in time order")
    changed = np.zeros(n - 1, dtype=np.bool_)
    for name in HEARTBEAT_FIELDS:
        col = status.values.get(name)
        if col is None:
            continue
        before, after = col[:-1], col[1:]
        if col.dtype == object:
            changed |= np.asarray(before != after, dtype=np.bool_)
        else:
            changed |= (before != after) & ~(np.isnan(before) & np.isnan(after))
    new = np.ones(n + 1, dtype=np.bool_)  # new[i]: i starts a run; new[n]: past the last
    new[1:n] = changed
    keep = new[:n] | new[1:]
    seal = status.values.get("seal")
    if seal is not None:
        keep |= np.asarray(seal == "broken", dtype=np.bool_)
    return keep


def telling_points(meter: str, status: Columns) -> list[MeterPoint]:
    """The heartbeats `telling_mask` keeps, as `MeterPoint`s of the HEARTBEAT_FIELDS they
    carry (absent ones left out): what `telling_heartbeats` keeps of the same points.
    Out of time order, they are put in order first (a stable sort, as there)."""
    ts_ms = status.ts_ms
    if len(ts_ms) > 1 and bool((ts_ms[1:] < ts_ms[:-1]).any()):
        by_time = np.argsort(ts_ms, kind="stable")
        status = Columns(ts_ms[by_time], {k: v[by_time] for k, v in status.values.items()})
    keep = np.flatnonzero(telling_mask(status))
    ts = status.ts_ms[keep].tolist()
    columns: list[tuple[str, list[Any]]] = []
    for name in HEARTBEAT_FIELDS:
        col = status.values.get(name)
        if col is None:
            continue
        picked = col[keep].tolist()
        if col.dtype != object:  # NaN: absent
            picked = [None if math.isnan(v) else v for v in picked]
        columns.append((name, picked))
    return [
        MeterPoint(meter, t, {name: vals[i] for name, vals in columns if vals[i] is not None})
        for i, t in enumerate(ts)
    ]


def _broken(seal: object) -> bool:
    """A seal value `_beats` reads as "broken"."""
    return seal is not None and str(seal) == "broken"


def _cover(
    meter: str, start_ms: int, end_ms: int, work_orders: Iterable[WorkOrder]
) -> WorkOrder | None:
    """The first work order open on `meter` at some time in [start_ms, end_ms]."""
    return next((w for w in work_orders if w.overlaps(meter, start_ms, end_ms)), None)


def _seal_finding(reason: Reason, cover: WorkOrder | None, severity: Severity) -> Finding:
    """An inspection at the seal rule's severity, unless a work order explains it."""
    if cover is None:
        return Finding("suspect", reason, inspect=True, rule_severity=severity)
    detail = f"{reason.detail}; covered by {cover.describe()}"
    return Finding("normal", Reason(reason.rule, reason.value, reason.threshold, detail))


def _event_findings(
    meter: str,
    events: Sequence[MeterPoint],
    work_orders: Sequence[WorkOrder],
    rule: SealRule,
) -> list[Finding]:
    seen: set[tuple[int, str]] = set()
    out = []
    for event in sorted(events, key=lambda e: (e.ts_ms, str(e.values.get("code")))):
        code = str(event.values.get("code"))
        if event.meter != meter or code not in rule.codes or (event.ts_ms, code) in seen:
            continue
        seen.add((event.ts_ms, code))  # at-least-once delivery: one event, one finding
        reason = Reason(
            "taxi.seal.event",
            code,
            rule.codes,
            f"event {code} at {format_ts(event.ts_ms)}",
            occurrences=((f"{code}@{event.ts_ms}", event.ts_ms),),
        )
        cover = _cover(meter, event.ts_ms, event.ts_ms, work_orders)
        out.append(_seal_finding(reason, cover, rule.severity))
    return out


def _broken_runs(
    meter: str, beats: Sequence[_Beat], work_orders: Sequence[WorkOrder]
) -> list[tuple[list[_Beat], WorkOrder | None]]:
    """Consecutive heartbeats with seal "broken", split where the covering work order changes.

    A heartbeat every 5 minutes would otherwise give hundreds of findings for one break,
    and a seal left broken after the work order closed must still be found.
    """
    runs: list[tuple[list[_Beat], WorkOrder | None]] = []
    previous_broken = False
    for beat in beats:
        if beat.seal is None:
            continue  # a heartbeat without a seal field neither ends nor continues a run
        broken = beat.seal == "broken"
        if broken:
            cover = _cover(meter, beat.ts_ms, beat.ts_ms, work_orders)
            if previous_broken and runs[-1][1] == cover:
                runs[-1][0].append(beat)
            else:
                runs.append(([beat], cover))
        previous_broken = broken
    return runs


def _heartbeat_findings(
    meter: str, beats: Sequence[_Beat], work_orders: Sequence[WorkOrder], rule: SealRule
) -> list[Finding]:
    out = []
    for run, cover in _broken_runs(meter, beats, work_orders):
        first, last = run[0].ts_ms, run[-1].ts_ms
        span = f"at {format_ts(first)}"
        if len(run) > 1:
            span = f"from {format_ts(first)} to {format_ts(last)} ({len(run)} heartbeats)"
        reason = Reason("taxi.seal.heartbeat", "broken", "intact", f"heartbeat seal broken {span}")
        out.append(_seal_finding(reason, cover, rule.severity))
    return out


def _ppk_findings(
    meter: str, beats: Sequence[_Beat], work_orders: Sequence[WorkOrder], rule: SealRule
) -> list[Finding]:
    out = []
    reporting = [b for b in beats if b.pulses_per_km is not None]
    for before, after in pairwise(reporting):
        old, new = before.pulses_per_km, after.pulses_per_km
        assert old is not None and new is not None
        if abs(new - old) <= PPK_REL_TOL * max(abs(old), abs(new)):
            continue
        reason = Reason(
            "taxi.param.pulses_per_km",
            [old, new],
            old,
            f"pulse constant changed from {old:g} to {new:g} between heartbeats at "
            f"{format_ts(before.ts_ms)} and {format_ts(after.ts_ms)}",
            occurrences=((f"pulses_per_km@{after.ts_ms}", after.ts_ms),),
        )
        # The change happened somewhere between the two heartbeats.
        cover = _cover(meter, before.ts_ms, after.ts_ms, work_orders)
        out.append(_seal_finding(reason, cover, rule.severity))
    return out


def seal_findings(
    meter: str,
    status: Series | Sequence[MeterPoint],
    events: Sequence[MeterPoint],
    work_orders: Sequence[WorkOrder],
    rule: SealRule,
) -> list[Finding]:
    """Seal breaks and parameter changes: critical unless an open work order covers them.

    Sources: `seal_broken` / `param_changed` events (rule.codes), heartbeats reporting
    seal "broken" (one finding per run of them), and a change of `pulses_per_km` between
    consecutive heartbeats that report it. Covered ones become info-level `normal`
    findings naming the work order, so the decision shows why they were excused.
    """
    beats = _beats(meter, status)
    return (
        _event_findings(meter, events, work_orders, rule)
        + _heartbeat_findings(meter, beats, work_orders, rule)
        + _ppk_findings(meter, beats, work_orders, rule)
    )
