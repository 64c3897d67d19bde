"""Cumulative registers → interval energies on a common grid, without inventing energy.

A register reading says how much energy passed up to its timestamp. Readings are
snapped to the district's interval grid; a grid point where *every* meter of the
district (master included) has a reading is a complete boundary, and the energy
between two consecutive complete boundaries is known exactly for every meter. A
missing reading therefore merges its neighbouring intervals into one longer
block: the model sees one equation spanning the gap, never an invented split.
Duplicates are gone by the time readings leave the store (one point per meter
and timestamp) and disorder does not matter once they are placed on the grid.
A register that goes down is a reset or a fault, never energy: the blocks on
either side of it stay, the block across it is dropped for that district.

A prosumer's meter (and a master meter whose area exports at noon) also has a reverse
register: the energy it carried is forward minus reverse, and the error β scales both
(one measuring element). A meter that never reports `reverse_kwh` has none; one that
does must report it with every reading it counts on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class MeterSeries:
    """One meter's readings in a window, oldest first (as the store returns them)."""

    ts_ms: NDArray[np.int64]
    energy_kwh: FloatArray
    current_a: FloatArray | None = None
    voltage_v: FloatArray | None = None
    reverse_kwh: FloatArray | None = None  # the reverse register, NaN where not reported

    @staticmethod
    def of(rows: Sequence[tuple[int, float]]) -> MeterSeries:
        """From (ts_ms, energy_kwh) pairs."""
        ts = np.array([r[0] for r in rows], dtype=np.int64)
        kwh = np.array([r[1] for r in rows], dtype=np.float64)
        return MeterSeries(ts, kwh)


@dataclass(frozen=True)
class Grid:
    """The interval grid of a window: `n` boundaries `start_ms + k·step_ms`."""

    start_ms: int
    step_ms: int
    n: int
    tolerance_ms: int

    @staticmethod
    def covering(start_ms: int, end_ms: int, step_ms: int, tolerance_ms: int) -> Grid:
        """Grid boundaries from the first at or after start to the last at or before end."""
        first = -(-start_ms // step_ms) * step_ms
        last = end_ms // step_ms * step_ms
        return Grid(first, step_ms, max(0, (last - first) // step_ms + 1), tolerance_ms)


@dataclass(frozen=True)
class Blocks:
    """Energy of each meter between consecutive complete boundaries.

    `energy[j, i]` is meter i's energy over block j; `master` the master meter's.
    `lengths[j]` counts grid intervals in block j, `end_index[j]` its last boundary.
    `intervals` (grid points × meters) and `master_intervals` (grid points) are the
    energies of the interval ending at each grid point (`interval_energies`): what the
    second-order loss terms are built from; a block's energies are their sums over it.
    None: each block's energy taken as spread evenly over its intervals.
    `supplied[j]` is the energy that entered the area's network in block j from any side:
    the master's forward register plus every customer's reverse one (PV fed in); None:
    the master's net energy (an area without prosumers or reverse registers).
    """

    meters: list[str]
    energy: FloatArray
    master: FloatArray
    lengths: NDArray[np.int64]
    end_index: NDArray[np.int64]
    intervals: FloatArray | None = None
    master_intervals: FloatArray | None = None
    supplied: FloatArray | None = None
    register_drops: dict[str, int] = field(default_factory=dict)
    # Grid intervals left out because a stopped meter stood still in them (`without_stopped`).
    stopped_intervals: dict[str, int] = field(default_factory=dict)

    @property
    def n_intervals(self) -> int:
        """Grid intervals covered by usable blocks."""
        return int(self.lengths.sum())

    def supply(self) -> FloatArray:
        """Energy into the area's network per block, from any side (`supplied`)."""
        return self.master if self.supplied is None else self.supplied

    def interval_rows(self) -> NDArray[np.int64]:
        """The grid interval (its end point) of every interval of every block, in order."""
        lengths = self.lengths.astype(np.int64)
        offsets = np.cumsum(lengths) - lengths
        first = self.end_index - lengths + 1
        rows: NDArray[np.int64] = np.repeat(first - offsets, lengths) + np.arange(
            int(lengths.sum()), dtype=np.int64
        )
        return rows

    def per_interval(self) -> tuple[FloatArray, FloatArray]:
        """(customers (intervals × meters), master (intervals,)) over the blocks' intervals,
        in `interval_rows` order: the interval energies where known, else each block's
        energy spread evenly over its intervals."""
        if self.intervals is not None and self.master_intervals is not None:
            rows = self.interval_rows()
            return self.intervals[rows], self.master_intervals[rows]
        owner = np.repeat(np.arange(len(self.lengths)), self.lengths)
        share = 1.0 / self.lengths[owner]
        x: FloatArray = self.energy[owner] * share[:, None]
        y0: FloatArray = self.master[owner] * share
        return x, y0


@dataclass(frozen=True)
class Placed:
    """Registers on the grid: NaN where a meter has no reading at a boundary."""

    meters: list[str]
    registers: FloatArray  # (grid.n, meters)
    received: int
    expected: int
    reverse: FloatArray | None = None  # (grid.n, meters) reverse registers; 0 for a meter without
    voltages: FloatArray | None = None  # (grid.n, meters) voltage at each reading, NaN unread

    @property
    def completeness(self) -> float:
        """Share of expected grid readings received (interval completeness)."""
        return self.received / self.expected if self.expected else 0.0

    def daily_completeness(self, grid: Grid) -> float:
        """Share of meter-days with at least one register reading.

        This is how a head-end counts collection success (a day's register is
        collected or not); interval gaps inside a day are absorbed by merged
        blocks and cost no energy, so they are not held against the district.
        """
        if grid.n == 0 or not self.meters:
            return 0.0
        day = (grid.start_ms + np.arange(grid.n) * grid.step_ms) // DAY_MS
        present = ~np.isnan(self.registers)
        hits = total = 0
        for d in np.unique(day):
            rows = present[day == d]
            hits += int(rows.any(axis=0).sum())
            total += rows.shape[1]
        return hits / total


def _snap(ts_ms: NDArray[np.int64], grid: Grid) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """(grid index, reading index) of the closest reading within tolerance of each boundary."""
    offset = ts_ms - grid.start_ms
    k = np.rint(offset / grid.step_ms).astype(np.int64)
    miss = np.abs(offset - k * grid.step_ms)
    ok = np.flatnonzero((miss <= grid.tolerance_ms) & (k >= 0) & (k < grid.n))
    # Several readings on one boundary: the closest wins (sort by miss, keep first).
    order = ok[np.lexsort((miss[ok], k[ok]))]
    ks = k[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    return ks[first], order[first]


def place_on_grid(series: Mapping[str, MeterSeries], grid: Grid) -> Placed:
    """Snap each reading to its nearest boundary (within tolerance); keep the closest one."""
    meters = sorted(series)
    regs = np.full((grid.n, len(meters)), np.nan)
    reverse = np.zeros((grid.n, len(meters)))
    volts = np.full((grid.n, len(meters)), np.nan)
    any_reverse = any_volts = False
    received = 0
    for i, meter in enumerate(meters):
        s = series[meter]
        if len(s.ts_ms) == 0 or grid.n == 0:
            continue
        ks, idx = _snap(s.ts_ms, grid)
        regs[ks, i] = s.energy_kwh[idx]
        received += len(ks)
        if s.voltage_v is not None:  # snapped with the registers: one _snap per meter
            any_volts = True
            volts[ks, i] = s.voltage_v[idx]
        rev = s.reverse_kwh
        if rev is not None and not bool(np.isnan(rev).all()) and bool(np.nanmax(rev) > 0):
            # A boundary counts only where both registers were read.
            any_reverse = True
            reverse[:, i] = np.nan
            reverse[ks, i] = rev[idx]
    return Placed(
        meters,
        regs,
        received,
        grid.n * len(meters),
        reverse if any_reverse else None,
        volts if any_volts else None,
    )


def place_values(ts_ms: NDArray[np.int64], values: FloatArray, grid: Grid) -> FloatArray:
    """Another quantity of one meter (current, voltage) on the grid, as its registers are."""
    out = np.full(grid.n, np.nan)
    if len(ts_ms) and grid.n:
        ks, idx = _snap(ts_ms, grid)
        out[ks] = values[idx]
    return out


def interval_energies(registers: FloatArray) -> FloatArray:
    """Energy of the interval ending at each grid point, per column (NaN where unknown).

    `registers` (grid points × meters) are net registers (forward − reverse), NaN where
    unread. Where a meter was read at both ends of an interval this is exact; across its
    own gap the gap's energy is spread evenly over the gap's intervals (never over a
    neighbour's), so a column's sum between two of its readings is what its register says.
    Before a meter's first and after its last reading nothing is known (NaN).
    """
    n, p = registers.shape
    out = np.full((n, p), np.nan)
    steps = np.arange(n)
    for i in range(p):
        col = registers[:, i]
        read = np.flatnonzero(np.isfinite(col))
        if len(read) < 2:
            continue
        if len(read) == read[-1] - read[0] + 1:  # no gap: plain differences
            out[read[0] + 1 : read[-1] + 1, i] = np.diff(col[read[0] : read[-1] + 1])
            continue
        filled = np.interp(steps[read[0] : read[-1] + 1], read, col[read])
        out[read[0] + 1 : read[-1] + 1, i] = np.diff(filled)
    return out


def blocks(placed: Placed, master: str, grid: Grid) -> Blocks:
    """Energies between consecutive complete boundaries; blocks across a register drop are cut."""
    regs = placed.registers
    rev = placed.reverse if placed.reverse is not None else np.zeros_like(regs)
    m = placed.meters.index(master)
    customers = [i for i in range(len(placed.meters)) if i != m]
    complete = np.flatnonzero(~(np.isnan(regs) | np.isnan(rev)).any(axis=1))
    if len(complete) < 2:
        empty = np.zeros((0, len(placed.meters) - 1))
        return Blocks(
            [placed.meters[i] for i in customers],
            empty,
            np.zeros(0),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        )
    forward = np.diff(regs[complete], axis=0)
    backward = np.diff(rev[complete], axis=0)
    drops = (forward < 0) | (backward < 0)
    diffs = forward - backward
    keep = ~drops.any(axis=1)
    register_drops = {placed.meters[i]: int(n) for i, n in enumerate(drops.sum(axis=0)) if n}
    starts, ends = complete[:-1][keep], complete[1:][keep]
    per_interval = interval_energies(regs - rev)
    # Gross supply: energy that entered the network from the transformer or from a
    # prosumer's export. The statistical line loss of an area with PV is taken over it
    # (what State Grid counts as an area's supply: the master's forward energy plus PV fed
    # in; its sales: customers' imports plus what the master sent back up), not over the
    # master's net energy, which a sunny month drives towards zero while the cables
    # carry as much as ever.
    supplied = forward[keep][:, m] + backward[keep][:, customers].sum(axis=1)
    return Blocks(
        meters=[placed.meters[i] for i in customers],
        energy=diffs[keep][:, customers],
        master=diffs[keep][:, m],
        lengths=(ends - starts).astype(np.int64),
        end_index=ends.astype(np.int64),
        intervals=per_interval[:, customers],
        master_intervals=per_interval[:, m],
        supplied=supplied if placed.reverse is not None else None,
        register_drops=register_drops,
    )


def without_stopped(
    blk: Blocks, grid: Grid, currents: Mapping[str, FloatArray], min_current_a: float
) -> Blocks:
    """Blocks without those in which a stopped meter stood still while current flowed.

    A stopped customer meter's household keeps drawing: that energy reaches the master
    but no customer column. Left in, a large stopped load fails the line-loss gate and a
    small one is soaked up by the meters whose load looks like it, confidently wrong.
    Its energy could be put back from its own V × I, but an instantaneous current does
    not give a quarter hour's energy without error, and that error follows the daily
    load shape, so it biases the neighbours (up to 2 pp on synthetic districts, 1 pp
    with the timing learnt from the meter's own history; see docs/metrology.md). The balance is therefore solved over the blocks in which
    every meter registered what it carried; a block where the meter stood still with its
    current unread is left out too (the meter is known to be broken). `currents` holds
    each stopped meter's current on the grid; `stopped_intervals` counts what was left out.
    """
    names = [m for m in sorted(currents) if m in blk.meters]
    if not names or len(blk.lengths) == 0:
        return blk
    ends = blk.end_index
    starts = ends - blk.lengths
    drop = np.zeros(len(ends), dtype=bool)
    left_out = {}
    for meter in names:
        still = blk.energy[:, blk.meters.index(meter)] == 0
        i_s, i_e = currents[meter][starts], currents[meter][ends]
        unread = np.isnan(i_s) | np.isnan(i_e)
        hit = still & (unread | (np.fmin(i_s, i_e) > min_current_a))
        left_out[meter] = int(blk.lengths[hit].sum())
        drop |= hit
    sel = np.flatnonzero(~drop)
    return replace(
        blk,
        energy=blk.energy[sel],
        master=blk.master[sel],
        supplied=blk.supplied[sel] if blk.supplied is not None else None,
        lengths=blk.lengths[sel],
        end_index=blk.end_index[sel],
        stopped_intervals=left_out,
    )
