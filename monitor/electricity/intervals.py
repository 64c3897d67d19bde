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
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # no block left out: a view
                span = slice(int(rows[0]), int(rows[-1]) + 1)
                return self.intervals[span], self.master_intervals[span]
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
        # Grid points are in time order: each day's rows are one run, counted in one pass.
        starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
        read = np.add.reduceat((~np.isnan(self.registers)).astype(np.int32), starts, axis=0)
        return float((read > 0).sum()) / read.size


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
    """Snap each reading to its nearest boundary (within tolerance); keep the closest one.

    The common case — one reading per boundary, in time order — needs no sort: each
    reading's boundary is computed in integers and written straight into its meter's
    row of a meters × grid buffer (contiguous writes: the matrices handed on are its
    transposed views, grid × meters in Fortran order). A meter with two readings for one
    boundary, or out of order, goes through `_snap` (the closest wins).
    """
    meters = sorted(series)
    p, n = len(meters), grid.n
    every = [series[m] for m in meters]
    regs = np.full((p, n), np.nan)
    volts = np.full((p, n), np.nan) if any(s.voltage_v is not None for s in every) else None
    received = 0
    snapped = []
    for i, s in enumerate(every):
        offset = s.ts_ms - grid.start_ms
        k = (offset + grid.step_ms // 2) // grid.step_ms  # a half step is beyond any tolerance
        ok = np.flatnonzero(
            (np.abs(offset - k * grid.step_ms) <= grid.tolerance_ms) & (k >= 0) & (k < n)
        )
        ks = k[ok]
        if len(ks) > 1 and bool(np.any(ks[1:] <= ks[:-1])):
            ks, ok = _snap(s.ts_ms, grid)
        regs[i, ks] = s.energy_kwh[ok]
        if volts is not None and s.voltage_v is not None:
            volts[i, ks] = s.voltage_v[ok]
        received += len(ks)
        snapped.append((ks, ok))
    return Placed(
        meters,
        regs.T,
        received,
        n * p,
        _reverse(every, n, snapped),
        volts.T if volts is not None else None,
    )


def _reverse(
    every: Sequence[MeterSeries],
    n: int,
    snapped: Sequence[tuple[NDArray[np.int64], NDArray[np.intp]]],
) -> FloatArray | None:
    """Reverse registers on the grid: a meter that ever reported energy on one has NaN
    where it was not read (a boundary counts only where both registers were read); the
    others 0. None when no meter has one."""
    reverse = None
    for i, (s, (ks, ok)) in enumerate(zip(every, snapped, strict=True)):
        rev = s.reverse_kwh
        if rev is None or len(rev) == 0 or not bool(np.nanmax(rev, initial=-np.inf) > 0):
            continue
        if reverse is None:
            reverse = np.zeros((len(every), n))
        reverse[i] = np.nan
        reverse[i, ks] = rev[ok]
    return reverse.T if reverse is not None else None


def place_values(ts_ms: NDArray[np.int64], values: FloatArray, grid: Grid) -> FloatArray:
    """Another quantity of one meter (current, voltage) on the grid, as its registers are."""
    out = np.full(grid.n, np.nan)
    if len(ts_ms) and grid.n:
        ks, idx = _snap(ts_ms, grid)
        out[ks] = values[idx]
    return out


def fill_linear(values: FloatArray, in_place: bool = False) -> FloatArray:
    """Each column's NaNs inside its read span filled by linear interpolation in time (rows);
    before a column's first and after its last reading they stay NaN. `values` itself is
    returned when nothing is missing, and filled when `in_place`.

    Most gaps are one missing reading (1 % missing at random), filled as the mean of its
    neighbours in one vectorised step; only columns with longer gaps (or an unread end)
    are interpolated one by one.
    """
    missing = np.isnan(values)
    t, i = np.nonzero(missing)
    if len(t) == 0:
        return values
    out = values if in_place else values.copy()
    n = len(values)
    inner = (t > 0) & (t < n - 1)
    tt, ii = t[inner], i[inner]
    lone = ~missing[tt - 1, ii] & ~missing[tt + 1, ii]
    tl, il = tt[lone], ii[lone]
    out[tl, il] = 0.5 * (out[tl - 1, il] + out[tl + 1, il])  # neighbours are read
    steps = np.arange(n)
    for col in np.unique(np.concatenate([ii[~lone], i[~inner]])).tolist():
        read = np.flatnonzero(~missing[:, col])
        if len(read) < 2:
            continue
        inside = steps[read[0] : read[-1] + 1]
        out[read[0] : read[-1] + 1, col] = np.interp(inside, read, out[read, col])
    return out


def interval_energies(registers: FloatArray, in_place: bool = False) -> FloatArray:
    """Energy of the interval ending at each grid point, per column (NaN where unknown).

    `registers` (grid points × meters) are net registers (forward − reverse), NaN where
    unread (filled by `fill_linear` when `in_place`). Where a meter was read at both ends
    of an interval this is exact; across its own gap the gap's energy is spread evenly
    over the gap's intervals (never over a neighbour's), so a column's sum between two of
    its readings is what its register says. Before a meter's first and after its last
    reading nothing is known (NaN). Row 0 is NaN.
    """
    filled = fill_linear(registers, in_place)
    out = np.empty(filled.shape)
    out[0] = np.nan
    np.subtract(filled[1:], filled[:-1], out=out[1:])
    return out


def blocks(placed: Placed, master: str, grid: Grid) -> Blocks:
    """Energies between consecutive complete boundaries; blocks across a register drop are cut."""
    regs = placed.registers
    rev = placed.reverse
    net = regs if rev is None else regs - rev  # NaN where either register was unread
    m = placed.meters.index(master)
    customers = [i for i in range(len(placed.meters)) if i != m]
    complete = np.flatnonzero(~np.isnan(net).any(axis=1))
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
    backward = np.diff(rev[complete], axis=0) if rev is not None else None
    drops = forward < 0 if backward is None else (forward < 0) | (backward < 0)
    diffs = forward if backward is None else forward - backward
    keep = ~drops.any(axis=1)
    register_drops = {placed.meters[i]: int(n) for i, n in enumerate(drops.sum(axis=0)) if n}
    starts, ends = complete[:-1][keep], complete[1:][keep]
    supplied = None
    if backward is not None:
        # Gross supply: energy that entered the network from the transformer or from a
        # prosumer's export. The statistical line loss of an area with PV is taken over
        # it (what State Grid counts as an area's supply: the master's forward energy plus
        # PV fed in; its sales: customers' imports plus what the master sent back up), not
        # over the master's net energy, which a sunny month drives towards zero while the
        # cables carry as much as ever.
        supplied = forward[keep][:, m] + backward[keep][:, customers].sum(axis=1)
    return Blocks(
        meters=[placed.meters[i] for i in customers],
        energy=diffs[keep][:, customers],
        master=diffs[keep][:, m],
        lengths=(ends - starts).astype(np.int64),
        end_index=ends.astype(np.int64),
        # The customers' columns are a fresh copy: filled in place.
        intervals=interval_energies(net[:, customers], in_place=True),
        master_intervals=interval_energies(net[:, [m]], in_place=True)[:, 0],
        supplied=supplied,
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
