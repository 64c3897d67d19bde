"""Registers → blocks: gaps merge intervals, duplicates and disorder do not matter,
register drops are cut, no energy is invented or lost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.electricity.balance import line_loss_pct
from monitor.electricity.intervals import (
    Grid,
    MeterSeries,
    _snap,
    blocks,
    fill_linear,
    place_on_grid,
)

STEP = 900_000


def series(values: dict[int, float]) -> MeterSeries:
    return MeterSeries.of(sorted(values.items()))


def grid(n: int) -> Grid:
    return Grid.covering(0, (n - 1) * STEP, STEP, STEP // 6)


def test_a_missing_reading_merges_its_two_intervals() -> None:
    master = {k * STEP: 10.0 * k for k in range(5)}
    a = {k * STEP: 4.0 * k for k in range(5)}
    b = {k * STEP: 5.0 * k for k in range(5) if k != 2}  # reading at k=2 lost
    g = grid(5)
    blk = blocks(place_on_grid({"M": series(master), "A": series(a), "B": series(b)}, g), "M", g)
    assert blk.meters == ["A", "B"]
    assert blk.lengths.tolist() == [1, 2, 1]
    assert blk.energy.tolist() == [[4.0, 5.0], [8.0, 10.0], [4.0, 5.0]]
    assert blk.master.tolist() == [10.0, 20.0, 10.0]
    assert blk.n_intervals == 4


def test_jittered_and_duplicated_readings_snap_to_the_grid() -> None:
    g = grid(3)
    rows = [
        (0, 1.0),
        (STEP + 20_000, 2.0),
        (STEP + 20_000, 2.0),
        (2 * STEP - 5_000, 3.0),
        (2 * STEP + 400_000, 99.0),
    ]  # the last is off-grid: ignored
    placed = place_on_grid({"A": MeterSeries.of(rows)}, g)
    assert placed.registers[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert placed.received == 3 and placed.completeness == 1.0


def test_register_drop_cuts_the_block_across_it() -> None:
    g = grid(4)
    m = series({k * STEP: 10.0 * k for k in range(4)})
    a = series({0: 5.0, STEP: 6.0, 2 * STEP: 0.5, 3 * STEP: 1.5})  # reset between 1 and 2
    blk = blocks(place_on_grid({"M": m, "A": a}, g), "M", g)
    assert blk.energy[:, 0].tolist() == [1.0, 1.0]
    assert blk.register_drops == {"A": 1}


def test_daily_completeness_counts_meter_days() -> None:
    g = Grid.covering(0, 2 * 86_400_000 - STEP, STEP, STEP // 6)
    full = series({k * STEP: float(k) for k in range(g.n)})
    sparse = series({0: 0.0})  # one reading on day one, nothing on day two
    placed = place_on_grid({"A": full, "B": sparse}, g)
    assert placed.daily_completeness(g) == 0.75


@settings(max_examples=150, deadline=None)
@given(
    increments=st.lists(
        st.lists(st.floats(0, 5, allow_nan=False), min_size=3, max_size=3), min_size=3, max_size=40
    ),
    lost=st.lists(st.tuples(st.integers(1, 38), st.integers(0, 2)), max_size=15),
    shuffle_seed=st.integers(0, 1000),
)
def test_no_energy_invented_or_lost(
    increments: list[list[float]], lost: list[tuple[int, int]], shuffle_seed: int
) -> None:
    regs = np.vstack([np.zeros(3), np.cumsum(np.array(increments), axis=0)])
    n = len(regs)
    drop = {(k, i) for k, i in lost if k < n - 1}  # never lose the last reading
    data = {}
    rng = np.random.default_rng(shuffle_seed)
    for i, name in enumerate(["M", "A", "B"]):
        rows = [(k * STEP, float(regs[k, i])) for k in range(n) if (k, i) not in drop]
        rows += rows[: len(rows) // 3]  # duplicates
        order = rng.permutation(len(rows))
        data[name] = MeterSeries.of([rows[j] for j in order])  # disorder
    g = grid(n)
    blk = blocks(place_on_grid(data, g), "M", g)
    # Every block spans whole intervals and the blocks together span first → last.
    assert blk.n_intervals == n - 1
    assert np.allclose(blk.energy.sum(axis=0), regs[-1, 1:] - regs[0, 1:])
    assert np.isclose(blk.master.sum(), regs[-1, 0] - regs[0, 0])


def test_interval_energies_spread_a_meters_own_gap_only() -> None:
    """The loss terms are squares of interval energies: each meter's are exact where it was
    read at both ends, and its own gap's energy is spread over that gap only, never over a
    neighbour's; the intervals of a block add up to the block's energy."""
    g = grid(4)
    master = series({0: 0.0, STEP: 1.0, 3 * STEP: 5.0})  # y0 = 1, then 4 over two intervals
    a = series({0: 0.0, 2 * STEP: 2.0, 3 * STEP: 3.0})  # 2 over two intervals, then 1
    blk = blocks(place_on_grid({"M": master, "A": a}, g), "M", g)
    assert blk.lengths.tolist() == [3]
    x, y0 = blk.per_interval()
    assert y0.tolist() == [1.0, 2.0, 2.0]
    assert x[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert x.sum(axis=0).tolist() == blk.energy.sum(axis=0).tolist()
    assert y0.sum() == blk.master.sum()


def test_an_areas_line_loss_is_over_what_entered_its_network_from_any_side() -> None:
    """A sunny day: the prosumer's export feeds the neighbour and the master sends the rest
    up. Over the master's net energy the loss reads many times what the cables lost of the
    energy they carried; over the gross supply (master forward + exports) it does not."""
    g = grid(3)
    ts = np.arange(3, dtype=np.int64) * STEP
    # Interval 1: the master supplies 10.2, A uses 10 (0.2 lost). Interval 2: P exports 10,
    # A uses 5, the master sends 4.8 back up (0.2 lost).
    master = MeterSeries(ts, np.array([0.0, 10.2, 10.2]), reverse_kwh=np.array([0.0, 0.0, 4.8]))
    pv = MeterSeries(ts, np.zeros(3), reverse_kwh=np.array([0.0, 0.0, 10.0]))
    a = MeterSeries(ts, np.array([0.0, 10.0, 15.0]))
    blk = blocks(place_on_grid({"M": master, "P": pv, "A": a}, g), "M", g)
    assert blk.supply().tolist() == [10.2, 10.0]
    assert line_loss_pct(blk) == pytest.approx(100 * 0.4 / 20.2)  # net: 0.4 / 5.4 = 7.4 %
    plain = MeterSeries(ts, np.array([0.0, 10.2, 15.4]))
    no_pv = blocks(place_on_grid({"M": plain, "A": a}, g), "M", g)
    assert no_pv.supplied is None
    np.testing.assert_allclose(no_pv.supply(), [10.2, 5.2])


def test_a_prosumers_energy_is_forward_minus_reverse() -> None:
    """PV: the meter's forward register stands still while the reverse one counts the
    export; the balance sees the net, and a falling reverse register is a fault."""
    g = grid(4)
    ts = np.arange(4, dtype=np.int64) * STEP
    master = MeterSeries(ts, np.array([0.0, 1.0, 1.5, 3.0]), reverse_kwh=np.zeros(4))
    pv = MeterSeries(ts, np.array([5.0, 5.0, 5.2, 5.2]), reverse_kwh=np.array([0, 0.4, 0.4, 9.0]))
    plain = MeterSeries(ts, np.array([1.0, 2.0, 3.0, 4.0]))  # no reverse register at all
    blk = blocks(place_on_grid({"M": master, "P": pv, "A": plain}, g), "M", g)
    assert blk.meters == ["A", "P"]
    np.testing.assert_allclose(blk.energy[:, 1], [-0.4, 0.2, -8.6])
    dropped = MeterSeries(ts, pv.energy_kwh, reverse_kwh=np.array([0, 0.4, 0.1, 0.2]))
    cut = blocks(place_on_grid({"M": master, "P": dropped, "A": plain}, g), "M", g)
    assert cut.register_drops == {"P": 1} and len(cut.lengths) == 2


@settings(max_examples=80, deadline=None)
@given(
    readings=st.lists(
        st.lists(st.tuples(st.integers(-STEP, 12 * STEP), st.floats(0, 1e4)), max_size=30),
        min_size=1,
        max_size=4,
    )
)
def test_placing_many_meters_at_once_is_placing_each_alone(
    readings: list[list[tuple[int, float]]],
) -> None:
    """The vectorised placement (in order, one reading per boundary) and the sorted one
    (duplicates, disorder: the closest wins) put every meter where `_snap` alone would."""
    g = grid(10)
    series = {f"m{i}": MeterSeries.of(rows) for i, rows in enumerate(readings)}
    placed = place_on_grid(series, g)
    received = 0
    for i, name in enumerate(sorted(series)):
        s = series[name]
        expected = np.full(g.n, np.nan)
        if len(s.ts_ms):
            ks, idx = _snap(s.ts_ms, g)
            expected[ks] = s.energy_kwh[idx]
            received += len(ks)
        np.testing.assert_array_equal(placed.registers[:, i], expected)
    assert placed.received == received and placed.expected == g.n * len(series)


def test_fill_linear_interpolates_inside_each_columns_reads_only() -> None:
    nan = np.nan
    values = np.array(
        [[nan, 0.0, 1.0], [1.0, nan, nan], [nan, 4.0, nan], [3.0, nan, nan], [nan, 5.0, 7.0]]
    )
    np.testing.assert_array_equal(
        fill_linear(values),
        [[nan, 0.0, 1.0], [1.0, 2.0, 2.5], [2.0, 4.0, 4.0], [3.0, 4.5, 5.5], [nan, 5.0, 7.0]],
    )
    assert np.isnan(values[1, 1])  # a copy unless asked to fill in place
