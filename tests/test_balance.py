"""The energy-balance estimator on synthetic districts with known errors."""

from __future__ import annotations

from datetime import date, timedelta, timezone
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from monitor.electricity.balance import (
    KAPPAS,
    FitConfig,
    daily_line_loss,
    day_hours,
    fit_balance,
    line_loss_pct,
)
from monitor.electricity.intervals import Blocks, Grid, without_stopped
from monitor.simulate.elec import master_input


def district(
    errors: list[float],
    n: int = 1500,
    seed: int = 0,
    vacant: tuple[int, ...] = (),
    noise: float = 0.0,
    fixed_kw: float = 0.4,
    gamma: float = 3e-4,
    smooth: tuple[int, ...] = (),
    loss: str = "customer",
    night_kw: float = 0.0,
    copies: dict[int, tuple[int, float]] | None = None,
    dusk_drift_h: float = 0.0,
) -> Blocks:
    """True loads with distinct daily shapes, meters reading (1+e)·x, master with losses.

    `loss` is the I²R physics (`monitor.simulate.elec.master_input`); `night_kw` an
    unmetered load on from 18:00 to 06:00; `copies` {i: (j, f)} makes household i's load
    f times household j's (not observable apart).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    hour = (t % 96) / 4
    x = np.empty((n, len(errors)))
    for i in range(len(errors)):
        peak = rng.uniform(6, 22)
        base = 0.0 if i in vacant else rng.uniform(0.02, 0.1)
        amp = 0.0 if i in vacant else rng.uniform(0.1, 0.4)
        jitter = rng.uniform(0.5, 1.5, n)
        if i in smooth:  # a household's load drifts from one quarter hour to the next
            jitter = 1 + 0.3 * np.convolve(rng.normal(0, 1, n + 15), np.ones(16) / 4, "valid")
        x[:, i] = base + amp * np.exp(-((hour - peak) ** 2) / 4) * np.clip(jitter, 0.1, None)
    for i, (j, f) in (copies or {}).items():
        x[:, i] = f * x[:, j]
    y = x * (1 + np.array(errors))
    load = x.sum(axis=1)
    # Lamps on from dusk to dawn; `dusk_drift_h` moves both by that many hours a day (the
    # season) and by a random ±`dusk_drift_h` × 10 each day (the weather).
    shift = np.zeros(n)
    if dusk_drift_h:
        day = t // 96
        weather = rng.uniform(-10, 10, int(day[-1]) + 1) * dusk_drift_h
        shift = day * dusk_drift_h + weather[day]
    night = ((hour < 6 + shift) | (hour >= 18 + shift)) * night_kw * 0.25
    master = master_input(load, fixed_kw, gamma, 0.25, loss) + night + rng.normal(0, noise, n)
    return Blocks(
        meters=[f"m{i}" for i in range(len(errors))],
        energy=y,
        master=master,
        lengths=np.ones(n, dtype=np.int64),
        end_index=t + 1,
    )


def test_recovers_known_errors_and_losses() -> None:
    errors = [0.0, 0.02, -0.03, 0.05, -0.01, 0.004, 0.0, 0.015]
    fit = fit_balance(district(errors), FitConfig(forgetting=1.0, ridge=1e-3))
    assert fit is not None
    for i, e in enumerate(errors):
        est = fit.meters[f"m{i}"]
        assert abs(est.error_pct - 100 * e) < 0.05, (i, est)
        assert est.error_ci_pct[0] <= est.error_pct <= est.error_ci_pct[1]
    assert abs(fit.fixed_loss_kw - 0.4) < 0.02
    assert fit.r_squared > 0.999
    blk = district(errors)
    expected = 100 * (blk.master.sum() - blk.energy.sum()) / blk.master.sum()
    assert abs(fit.line_loss_pct - expected) < 1e-9


def test_noise_widens_the_interval_and_it_still_covers() -> None:
    errors = [0.01, -0.02, 0.0, 0.03, 0.0, -0.005]
    covered = 0
    for seed in range(10):
        fit = fit_balance(district(errors, seed=seed, noise=0.01), FitConfig(forgetting=1.0))
        assert fit is not None
        for i, e in enumerate(errors):
            lo, hi = fit.meters[f"m{i}"].error_ci_pct
            covered += lo <= 100 * e <= hi
    assert covered >= 0.85 * 10 * len(errors)


def test_a_vacant_meter_is_not_observable() -> None:
    fit = fit_balance(district([0.0, 0.01, 0.02, -0.01], vacant=(2,)), FitConfig(forgetting=1.0))
    assert fit is not None
    assert fit.meters["m2"].information_ratio < 1  # all prior, no data
    assert fit.meters["m1"].information_ratio > 100


def test_forgetting_follows_a_drift() -> None:
    first = district([0.0, 0.0, 0.0], n=1000, seed=3)
    later = district([0.0, 0.04, 0.0], n=1000, seed=4)
    both = Blocks(
        first.meters,
        np.vstack([first.energy, later.energy]),
        np.concatenate([first.master, later.master]),
        np.ones(2000, dtype=np.int64),
        np.arange(1, 2001),
    )
    stiff = fit_balance(both, FitConfig(forgetting=1.0, ridge=1e-3))
    quick = fit_balance(both, FitConfig(forgetting=0.99, ridge=1e-3))
    assert stiff is not None and quick is not None
    assert abs(quick.meters["m1"].error_pct - 4.0) < abs(stiff.meters["m1"].error_pct - 4.0)
    assert abs(quick.meters["m1"].error_pct - 4.0) < 0.2


def test_too_few_blocks_gives_no_fit() -> None:
    assert fit_balance(district([0.0] * 10, n=11), FitConfig()) is None


@settings(max_examples=30, deadline=None)
@given(errors=st.lists(st.floats(-0.08, 0.08), min_size=2, max_size=6), seed=st.integers(0, 99))
def test_noise_free_estimates_match_truth(errors: list[float], seed: int) -> None:
    fit = fit_balance(district(errors, n=800, seed=seed), FitConfig(forgetting=1.0, ridge=1e-4))
    assert fit is not None
    for i, e in enumerate(errors):
        assert abs(fit.meters[f"m{i}"].error_pct - 100 * e) < 0.1


def test_the_ridge_prior_shrinks_toward_no_error() -> None:
    blk = district([0.0, 0.04, 0.0], n=400, seed=4)
    weak = fit_balance(blk, FitConfig(forgetting=1.0, ridge=1e-3))
    strong = fit_balance(blk, FitConfig(forgetting=1.0, ridge=50.0))
    assert weak is not None and strong is not None
    assert 0 < strong.meters["m1"].error_pct < weak.meters["m1"].error_pct


MIDNIGHT_UTC = 1772323200000  # 2026-03-01T00:00:00Z
QUARTER_MS = 900_000


def test_daily_loss_splits_the_window_by_local_day_and_loses_nothing() -> None:
    blk = district([0.01, -0.02, 0.0], n=4 * 96)  # four days of 15-min blocks
    grid = Grid(MIDNIGHT_UTC, QUARTER_MS, 4 * 96 + 1, QUARTER_MS // 6)
    days = daily_line_loss(blk, grid)
    assert [d.day for d in days] == [date(2026, 3, 1) + timedelta(days=k) for k in range(4)]
    assert [d.intervals for d in days] == [96] * 4
    assert sum(d.supplied_kwh for d in days) == pytest.approx(blk.master.sum())
    assert sum(d.delivered_kwh for d in days) == pytest.approx(blk.energy.sum())
    first = blk.master[:96].sum()
    assert days[0].loss_pct == pytest.approx(100 * (first - blk.energy[:96].sum()) / first)
    # Shanghai's day starts 8 h earlier: the first 16 h fall on 1 March, the last 8 h
    # of the window on a fifth local day.
    shanghai = daily_line_loss(blk, grid, timezone(timedelta(hours=8)))
    assert [d.intervals for d in shanghai] == [64, 96, 96, 96, 32]
    assert sum(d.supplied_kwh for d in shanghai) == pytest.approx(blk.master.sum())


@given(st.lists(st.integers(1, 12), min_size=1, max_size=60), st.integers(-12, 14))
@settings(max_examples=60, deadline=None)
def test_daily_loss_counts_every_block_once(lengths: list[int], offset_h: int) -> None:
    """Blocks of any length and any zone: per-day sums add up to the whole window."""
    n = len(lengths)
    rng = np.random.default_rng(n)
    master = rng.uniform(1, 2, n)
    energy = master[:, None] * rng.uniform(0.3, 0.45, (n, 2))
    ends = np.cumsum(lengths).astype(np.int64)
    blk = Blocks(["a", "b"], energy, master, np.array(lengths, dtype=np.int64), ends)
    grid = Grid(MIDNIGHT_UTC + 3 * QUARTER_MS, QUARTER_MS * 8, int(ends[-1]) + 1, 0)
    days = daily_line_loss(blk, grid, timezone(timedelta(hours=offset_h)))
    assert sum(d.intervals for d in days) == sum(lengths)
    assert [d.day for d in days] == sorted({d.day for d in days})
    whole = 100 * (1 - sum(d.delivered_kwh for d in days) / sum(d.supplied_kwh for d in days))
    assert whole == pytest.approx(line_loss_pct(blk))


def test_daily_loss_of_nothing_is_empty() -> None:
    empty = Blocks(
        ["a"],
        np.zeros((0, 1)),
        np.zeros(0),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )
    assert daily_line_loss(empty, Grid(MIDNIGHT_UTC, QUARTER_MS, 0, 0)) == []


def _stopped_district() -> tuple[Blocks, Grid, NDArray[np.float64]]:
    """m2 stops two thirds of the way; its household keeps drawing, as its current says."""
    n, volts = 3000, 230.0
    blk = district([0.01, -0.02, 0.0, 0.03, 0.0], n=n, noise=0.002, seed=5, smooth=(2,))
    energy = blk.energy.copy()
    energy[2 * n // 3 :, 2] = 0.0
    padded = np.concatenate([blk.energy[:1, 2], blk.energy[:, 2], blk.energy[-1:, 2]])
    current = (padded[:-1] + padded[1:]) / 2 / 0.25 * 1000 / volts  # instantaneous
    grid = Grid(MIDNIGHT_UTC, QUARTER_MS, n + 1, QUARTER_MS // 6)
    stopped = Blocks(blk.meters, energy, blk.master, blk.lengths, blk.end_index)
    return stopped, grid, current


def test_a_stopped_meters_blocks_are_left_out_of_the_balance() -> None:
    blk, grid, current = _stopped_district()
    cfg = FitConfig(forgetting=0.9995, ridge=1e-3)
    blind = fit_balance(blk, cfg)
    clean = without_stopped(blk, grid, {"m2": current}, 0.1)
    seen = fit_balance(clean, cfg)
    assert blind is not None and seen is not None
    assert clean.stopped_intervals == {"m2": 1000}
    assert len(clean.master) == 2000
    truth = {"m0": 1.0, "m1": -2.0, "m2": 0.0, "m3": 3.0, "m4": 0.0}
    for m, e in truth.items():
        est = seen.meters[m]
        assert est.error_ci_pct[0] <= e <= est.error_ci_pct[1], (m, est)
        assert abs(est.error_pct - e) < 0.5, (m, est)
    # Left in, the stopped load is soaked up by the other meters: narrow intervals far
    # from the truth, which the evaluation would act on.
    misled = [m for m, e in truth.items() if abs(blind.meters[m].error_pct - e) > 5]
    assert misled, {m: blind.meters[m].error_pct for m in truth}
    # The billing line loss of what is left is still master − Σ customers.
    assert seen.line_loss_pct == pytest.approx(line_loss_pct(clean))


def test_still_blocks_with_an_unread_current_are_left_out_only_for_a_stopped_meter() -> None:
    blk, grid, current = _stopped_district()
    gaps = current.copy()
    gaps[[2500, 2700]] = np.nan  # inside the stopped stretch: already left out
    gaps[[100]] = np.nan  # before it: the register moved, both blocks stay
    out = without_stopped(blk, grid, {"m2": gaps}, 0.1)
    assert len(out.master) == 2000
    idle = current.copy()
    idle[2 * 3000 // 3 :] = 0.0  # a vacant household: still register, no current
    assert len(without_stopped(blk, grid, {"m2": idle}, 0.1).master) == 3000
    assert without_stopped(blk, grid, {}, 0.1) is blk


# --- loss physics the estimator was not written for -------------------------------------

# A trunk feeder: line loss ≈ 9 %, loss-on-loss ≈ 0.5–1 %.
trunk_feeder = partial(district, fixed_kw=0.4, gamma=0.01)


@pytest.mark.parametrize("loss", ["customer", "trunk"])
def test_either_loss_physics_gives_unbiased_estimates(loss: str) -> None:
    """Fitting only the customer-current loss on a trunk feeder shifted every β by ~1 pp
    (the loss-on-loss term ≈ 2·r²·X³ absorbed as a common-mode error); the κ family fits
    both physics without being told which one made the data."""
    errors = [0.0, 0.02, -0.03, 0.01, -0.01, 0.004, 0.0, 0.015]
    for seed in (3, 4):
        blk = trunk_feeder(errors, n=2000, seed=seed, noise=0.0005, loss=loss)
        fit = fit_balance(blk, FitConfig(forgetting=1.0, ridge=1e-3))
        assert fit is not None
        deviations = [fit.meters[f"m{i}"].error_pct - 100 * e for i, e in enumerate(errors)]
        assert abs(float(np.mean(deviations))) < 0.05, (fit.loss_model, deviations)
        assert float(np.median(np.abs(deviations))) < 0.05, (fit.loss_model, deviations)
        covered = sum(
            fit.meters[f"m{i}"].error_ci_pct[0] <= 100 * e <= fit.meters[f"m{i}"].error_ci_pct[1]
            for i, e in enumerate(errors)
        )
        assert covered >= 6, (fit.loss_model, deviations)


def test_the_customer_loss_alone_is_biased_on_a_trunk_feeder() -> None:
    """What the test above guards against: only κ = 0 (the old regressor) is ~1 pp off."""
    errors = [0.0, 0.02, -0.03, 0.01, -0.01, 0.004, 0.0, 0.015]
    blk = trunk_feeder(errors, n=2000, seed=3, noise=0.0005, loss="trunk")
    only_customer = fit_balance(blk, FitConfig(forgetting=1.0, ridge=1e-3), kappas=(0.0,))
    assert only_customer is not None
    shift = np.mean(
        [only_customer.meters[f"m{i}"].error_pct - 100 * e for i, e in enumerate(errors)]
    )
    assert abs(shift) > 0.5


@settings(max_examples=15, deadline=None)
@given(
    errors=st.lists(st.floats(-0.06, 0.06), min_size=4, max_size=8),
    seed=st.integers(0, 99),
    loss=st.sampled_from(["customer", "trunk"]),
)
def test_any_errors_under_either_physics_are_recovered(
    errors: list[float], seed: int, loss: str
) -> None:
    """A few percent of line loss, either physics: estimates near the truth, and the
    interval holds every plausible loss model's estimate."""
    n = len(errors)
    blk = district(
        errors, n=1500, seed=seed, noise=0.0005, loss=loss, fixed_kw=0.01 * n, gamma=0.002
    )
    fit = fit_balance(blk, FitConfig(forgetting=1.0, ridge=1e-4))
    assert fit is not None
    for i, e in enumerate(errors):
        est = fit.meters[f"m{i}"]
        assert abs(est.error_pct - 100 * e) < 0.3, (i, est, fit.loss_model)
        lo, hi = est.model_range_pct
        assert est.error_ci_pct[0] <= lo <= est.error_pct <= hi <= est.error_ci_pct[1]


def test_the_master_class_uncertainty_widens_every_interval() -> None:
    blk = district([0.01, -0.02, 0.0, 0.03], seed=3, noise=0.002)
    bare = fit_balance(blk, FitConfig(forgetting=1.0))
    typed = fit_balance(blk, FitConfig(forgetting=1.0, master_uncertainty_pct=0.289))
    assert bare is not None and typed is not None
    for m in bare.meters:
        assert typed.meters[m].ci_halfwidth_pct >= max(
            bare.meters[m].ci_halfwidth_pct, 1.96 * 0.289
        )
        assert typed.meters[m].error_pct == pytest.approx(bare.meters[m].error_pct)


def test_an_unmetered_night_load_is_a_finding_not_a_bias() -> None:
    """Street lighting on from 18:00 to 06:00 is no fixed loss; the district says so and
    its estimates stay where they are without the lamps."""
    errors = [0.01, -0.02, 0.0, 0.03, 0.0, -0.01]
    n = 2880
    grid = Grid(MIDNIGHT_UTC, QUARTER_MS, n + 1, QUARTER_MS // 6)
    cfg = FitConfig(forgetting=1.0, ridge=1e-3)
    dark = district(errors, n=n, seed=6, noise=0.001, night_kw=0.3)
    lit = district(errors, n=n, seed=6, noise=0.001)
    fit = fit_balance(dark, cfg, day_hours(dark, grid))
    plain = fit_balance(lit, cfg, day_hours(lit, grid))
    assert fit is not None and plain is not None
    assert "time of day" in fit.misfit and plain.misfit == ""
    for m, est in fit.meters.items():
        assert abs(est.error_pct - plain.meters[m].error_pct) < 0.2, (m, est)
    blind = fit_balance(dark, cfg)  # no clock, no time-of-day model: the lamps bias it
    assert blind is not None and blind.misfit == ""
    assert max(abs(blind.meters[m].error_pct - plain.meters[m].error_pct) for m in fit.meters) > 0.3


def test_lamps_that_follow_dusk_leave_residuals_that_follow_each_other() -> None:
    """Lamps switched by dusk, which moves with the season and the weather, are no fixed
    loss by the hour either: what the hourly model leaves is a slowly changing remainder,
    neighbours alike (lag-1 autocorrelation well above 0), unlike the noise a described
    balance leaves (about 0 here; rounding makes it negative on registers)."""
    errors = [0.01, -0.02, 0.0, 0.03, 0.0, -0.01]
    n = 2880
    grid = Grid(MIDNIGHT_UTC, QUARTER_MS, n + 1, QUARTER_MS // 6)
    cfg = FitConfig(forgetting=1.0, ridge=1e-3)
    fits = {}
    for name, kw, drift in (("clock", 0.3, 0.0), ("dusk", 0.3, 0.02), ("none", 0.0, 0.0)):
        blk = district(errors, n=n, seed=6, noise=0.001, night_kw=kw, dusk_drift_h=drift)
        fits[name] = fit_balance(blk, cfg, day_hours(blk, grid))
    clock, dusk, none = fits["clock"], fits["dusk"], fits["none"]
    assert clock is not None and dusk is not None and none is not None
    assert abs(none.residual_autocorrelation) < 0.1
    assert abs(clock.residual_autocorrelation) < 0.1  # on the clock: the hourly model holds
    assert "time of day" in dusk.misfit and dusk.residual_autocorrelation > 0.2
    # ...and what it hides: estimates pp off with no sign of it in their intervals.
    worst = max(abs(dusk.meters[f"m{i}"].error_pct - 100 * e) for i, e in enumerate(errors))
    assert worst > 1.0


def test_day_hours_split_a_block_by_local_hour() -> None:
    blk = Blocks(
        ["a"],
        np.ones((2, 1)),
        np.ones(2),
        np.array([6, 4], dtype=np.int64),  # 05:30–07:00, then 07:00–08:00 (UTC)
        np.array([28, 32], dtype=np.int64),
    )
    grid = Grid(MIDNIGHT_UTC, QUARTER_MS, 33, 0)
    hours = day_hours(blk, grid)
    assert hours.shape == (2, 24)
    assert hours[0, [5, 6]].tolist() == [0.5, 1.0] and hours[0].sum() == 1.5
    assert hours[1, 7] == 1.0 and hours[1].sum() == 1.0
    shanghai = day_hours(blk, grid, timezone(timedelta(hours=8)))
    assert shanghai[0, [13, 14]].tolist() == [0.5, 1.0] and shanghai[1, 15] == 1.0


def test_a_scaled_copy_of_a_household_names_its_twin() -> None:
    blk = district([0.0, 0.01, 0.0, -0.01, 0.0], n=1500, seed=8, copies={3: (1, 0.7)})
    fit = fit_balance(blk, FitConfig(forgetting=1.0))
    assert fit is not None
    assert fit.meters["m3"].confounded_with[0] == "m1"
    assert fit.meters["m1"].confounded_with[0] == "m3"
    assert fit.meters["m3"].max_correlation > 0.99 and fit.meters["m0"].max_correlation < 0.9


def test_kappa_grid_spans_both_physics() -> None:
    assert KAPPAS[0] == 0.0 and KAPPAS[-1] == 1.0


def test_the_registrys_feeder_places_become_shared_paths_or_branches() -> None:
    """Branch and distance: households on one cable share it up to the nearer one; none
    across branches; an unplaced meter shares nothing. Branch alone: one label each."""
    from monitor.electricity.balance import FeederPlace, registry_topology

    meters = ["a", "b", "c", "d"]
    full = registry_topology(
        meters,
        {"a": FeederPlace("L1", 50.0), "b": FeederPlace("L1", 120.0), "c": FeederPlace("L2", 80.0)},
    )
    assert full is not None and full.shared_ohm is not None and full.branches is None
    np.testing.assert_array_equal(
        full.shared_ohm,
        [[50, 50, 0, 0], [50, 120, 0, 0], [0, 0, 80, 0], [0, 0, 0, 0]],
    )
    labels = registry_topology(meters, {"a": FeederPlace("L1"), "c": FeederPlace("L2", 80.0)})
    assert labels is not None and labels.shared_ohm is None
    assert labels.branches is not None and labels.branches.tolist() == [0, -1, 1, -1]
    assert registry_topology(meters, {"a": FeederPlace("L1", 5.0)}) is None
