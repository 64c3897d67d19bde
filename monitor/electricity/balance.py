"""The energy-balance estimator of docs/metrology.md, solved by exponentially weighted ridge LS.

Per block j of a district (see `intervals.blocks`):

    y0_j = Σ_i β_i·y_ij + L_fix·T_j + γ·Q_j(κ) + ε_j,     β_i = 1/(1 + e_i)

with T_j the block's hours and Q_j(κ) = Σ_t (S_t + κ·(ŷ0_t − S_t))²/Δt over its
intervals: S the customers' consumption, ŷ0 the master energy the κ = 0 fit explains,
both per grid interval (`_PerInterval`: the squares are summed interval by interval, the
balance itself stays on exact block sums).

Why a family of loss models and not one. The I²R loss follows a current, but which one
depends on the feeder: on a feeder whose loss is γ·S² (customer current, κ = 0) a
master-side regressor biases every β; on one whose trunk carries the losses' own current
(P_in = P_cust + L_fix + r·P_in², κ = 1) the customer-side regressor misses the
loss-on-loss term ≈ 2·r·S³, and the β's absorb it as a common shift of up to ~1 pp while
the residuals barely move. The observed y0² is no way out: the master's own noise earns
any regressor built on it an RSS discount whatever the physics. So κ is fitted over a
grid between the two physics, with the fitted ŷ0 (noise-free), and the loss model's
uncertainty is carried into every interval: each meter's interval is the union of its
intervals under every loss model the data cannot reject (ΔRSS/σ̂² within the χ² 95 %
point). The candidate models also let the fixed loss differ by time of day (unmetered
night loads such as street lighting) or drift over the window; when only those fit, the
district's residuals have structure the plain model cannot explain, and `misfit` says so.

Only the loss columns change from one candidate to the next, so every candidate shares
one factorisation of the meters' block (Schur complement on the k ≤ 5 loss columns):
the meters' normal matrix, its inverse B and Z0 = X·B are computed once; a candidate
costs O(n·p·k).

Why a weighted batch solve and not a recursive (RLS) update: RLS with forgetting
λ minimises exactly Σ λ^age·r² plus its initial-covariance prior, so solving the
normal equations with the same weights and a ridge prior gives the same estimate;
the batch form is exact when readings arrive late or out of order (RLS would
have to be rewound), it makes "as of T" a pure function of the telemetry up to
T, and its cost is one p×p solve per district (p ≈ meters + 2) — the normal
equations can be accumulated incrementally when a deployment needs it. The
ridge prior pulls each β toward 1 with the weight of `ridge` typical intervals:
negligible for a meter with data, dominant for one that is not observable
(vacant, collinear), whose posterior interval then stays wide and marks it
`unknown` instead of letting it absorb its neighbours' energy.

Uncertainty, per meter, the largest of: the sandwich A⁻¹·X'W Σ W X·A⁻¹ with block noise
variance proportional to block length and σ² from the weighted residuals; and the same
with a Bartlett-weighted (Newey–West) sum of the residuals' own cross-products over
`HAC_LAGS` neighbouring blocks, insurance against residuals that follow each other on
real data. To that the master meter's own error (Type B, common to the district: every
estimate is relative to the master) is added in quadrature, then the union over the
plausible loss models is taken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from monitor.electricity.intervals import Blocks, FloatArray, Grid, fill_linear

# Below this ratio of a meter's data information to its prior information the
# estimate is mostly prior: the meter is not observable.
MIN_INFORMATION_RATIO = 10.0
HOUR_MS = 3_600_000
# κ grid between customer-current (0) and trunk-current (1) I²R loss.
KAPPAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Extra structure a candidate loss model may have: none, a fixed loss per hour of the
# day (night loads), a fixed and I²R loss drifting linearly over the window.
EXTRAS = ("", "time_of_day", "drift")
HAC_LAGS = 4
# Without the feeder's topology: loss models that split the households into random
# groups (branches) with their own resistance, so the β's can show how far a per-branch
# loss would move them (see `_branch_candidates`). Fewer meters than this make groups of
# two or three, whose loss terms are as good as per-meter ones: left out.
BRANCH_DRAWS = 6
MIN_METERS_FOR_BRANCHES = 20
# χ² 95 % points for 1..6 degrees of freedom: a loss model is plausible unless it fits
# worse than the best by more than this many σ̂².
CHI2_95 = (3.841, 5.991, 7.815, 9.488, 11.070, 12.592)
# A misfit is reported only when the plain models are rejected far beyond chance (99.9 %):
# at 95 % one district in twenty would carry a false finding.
CHI2_999 = (10.828, 13.816, 16.266, 18.467, 20.515, 22.458)


def chi2_quantile(table: tuple[float, ...], level: float, df: int) -> float:
    """The χ² quantile: from `table` up to its length, Wilson–Hilferty beyond (< 1 %)."""
    df = max(df, 1)
    if df <= len(table):
        return table[df - 1]
    z = NormalDist().inv_cdf(level)
    h = 2.0 / (9.0 * df)
    return float(df * (1.0 - h + z * math.sqrt(h)) ** 3)


# Posterior |correlation| of two β's above which the meters are named as confounded.
CONFOUNDED_CORRELATION = 0.8


@dataclass(frozen=True)
class FitConfig:
    """Estimator settings (from `rules.elec.estimation`)."""

    forgetting: float = 0.999
    ridge: float = 1.0
    confidence: float = 0.95
    step_hours: float = 0.25
    master_uncertainty_pct: float = 0.0  # Type B standard uncertainty of the master's error


@dataclass(frozen=True)
class MeterEstimate:
    """One customer meter's estimated error."""

    meter: str
    beta: float
    error_pct: float
    error_ci_pct: tuple[float, float]
    se_pct: float
    information_ratio: float
    n_intervals: int
    mean_kwh: float
    # Point estimates under every plausible loss model: (lowest, highest) error in %.
    model_range_pct: tuple[float, float] = (float("nan"), float("nan"))
    # Meters whose β this one's cannot be told apart from (posterior correlation).
    confounded_with: tuple[str, ...] = ()
    # The largest |posterior correlation| of β with another meter's: near 1 for a
    # household whose load is a scaled copy of another's (the data fix only their sum).
    max_correlation: float = 0.0
    # The interval without the master's Type B: what the data resolve of this meter
    # against its district's master (the absolute `error_ci_pct` adds the master's error).
    relative_ci_pct: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def ci_halfwidth_pct(self) -> float:
        return (self.error_ci_pct[1] - self.error_ci_pct[0]) / 2

    @property
    def relative_halfwidth_pct(self) -> float:
        """Half-width of `relative_ci_pct`; the absolute one where that is not known."""
        low, high = self.relative_ci_pct
        if math.isnan(low) or math.isnan(high):
            return self.ci_halfwidth_pct
        return (high - low) / 2


@dataclass(frozen=True)
class DistrictFit:
    """The estimate for a whole district and how well the model fits."""

    meters: dict[str, MeterEstimate]
    fixed_loss_kw: float
    gamma_per_kw: float
    line_loss_pct: float
    residual_rms_pct: float
    r_squared: float
    n_blocks: int
    n_intervals: int
    effective_intervals: float
    loss_model: str = ""  # the candidate the point estimates come from
    kappa: float = 0.0
    plausible_models: tuple[str, ...] = ()
    misfit: str = ""  # structure in the residuals the plain loss model cannot explain
    master_uncertainty_pct: float = 0.0
    # Lag-1 autocorrelation of the chosen model's residuals (`residual_autocorrelation`).
    residual_autocorrelation: float = float("nan")


def line_loss_pct(blocks: Blocks) -> float:
    """Statistical line loss over the blocks, in percent: (master − Σ customers), both net,
    over the energy that entered the area's network from any side (`Blocks.supplied`: the
    master's forward energy plus the prosumers' exports; the master's energy when no meter
    has a reverse register). Over the net supply a sunny PV month read 12.5 % on a feeder
    whose cables lost 2 % of what they carried (bench.families, RU3 in July)."""
    supplied = float(blocks.supply().sum())
    if supplied <= 0:
        return float("nan")
    return 100.0 * (float(blocks.master.sum()) - float(blocks.energy.sum())) / supplied


@dataclass(frozen=True)
class DailyLoss:
    """One local day's statistical line loss, over the blocks that end in it."""

    day: date
    supplied_kwh: float  # into the network: master forward + prosumers' exports
    delivered_kwh: float  # out of it: customers' imports + master reverse
    intervals: int  # grid intervals covered by those blocks

    @property
    def loss_pct(self) -> float | None:
        """(supplied − delivered) / supplied in percent; None when nothing was supplied."""
        if self.supplied_kwh <= 0:
            return None
        return 100.0 * (self.supplied_kwh - self.delivered_kwh) / self.supplied_kwh


def daily_line_loss(blocks: Blocks, grid: Grid, zone: tzinfo = UTC) -> list[DailyLoss]:
    """The line loss of each local day, oldest first, for a chart of loss over time.

    A block belongs to the day its last instant falls in (a block ending at
    midnight is the previous day's), so every kWh is counted once and none is
    split by guess; a day whose blocks cover few intervals says so in `intervals`.
    """
    if len(blocks.lengths) == 0:
        return []
    last_ms = grid.start_ms + blocks.end_index * grid.step_ms - 1
    # Local dates per hour (a few hundred zone look-ups), not per block: offsets
    # change on the hour, so this is exact for every real zone.
    hours, where = np.unique(last_ms // HOUR_MS, return_inverse=True)
    dates = [datetime.fromtimestamp(int(h) * 3600, zone).date() for h in hours]
    supplied = blocks.supply()
    delivered = supplied - (blocks.master - blocks.energy.sum(axis=1))
    # Hours → days, then sums per day in one pass each (the blocks are not looped).
    days, day_of_hour = np.unique(np.array(dates, dtype="datetime64[D]"), return_inverse=True)
    day = np.asarray(day_of_hour).reshape(-1)[where]
    count = len(days)
    fed = np.bincount(day, supplied, count)
    used = np.bincount(day, delivered, count)
    intervals = np.bincount(day, blocks.lengths, count)
    return [
        DailyLoss(d.astype(date), float(f), float(u), int(n))
        for d, f, u, n in zip(days, fed, used, intervals, strict=True)
    ]


def day_hours(blocks: Blocks, grid: Grid, zone: tzinfo = UTC) -> FloatArray:
    """Hours of each block in each hour of the local day (blocks × 24).

    Hourly, not coarser: street lighting switches at dusk and dawn, which move through
    the year; quarter-day bins left most of it in the residuals (bench.families).
    """
    n = len(blocks.lengths)
    out = np.zeros((n, 24))
    if n == 0:
        return out
    offset = zone.utcoffset(datetime.fromtimestamp(grid.start_ms / 1000, UTC)) or timedelta(0)
    offset_ms = int(offset.total_seconds() * 1000)
    lengths = blocks.lengths.astype(np.int64)
    starts = blocks.end_index - lengths
    owner = np.repeat(np.arange(n), lengths)
    first = np.repeat(starts, lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    mid_ms = grid.start_ms + (first + within) * grid.step_ms + grid.step_ms // 2 + offset_ms
    hour = (mid_ms % 86_400_000) // HOUR_MS
    np.add.at(out, (owner, hour), grid.step_ms / HOUR_MS)
    return out


def shared_resistance(
    energies: FloatArray,
    volts: FloatArray,
    master_volts: FloatArray,
    columns: Sequence[int] | None = None,
) -> FloatArray | None:
    """How much of their path from the transformer any two meters share, from voltages.

    A household's voltage sags below the transformer's by Σ_j R_ij·I_j: R_ij the
    resistance its path shares with household j's (more for a neighbour down the same
    cable, none for one on another branch). Regressing each meter's sag below the master's
    voltage on every meter's interval energy gives R up to a common scale (the voltage,
    the power factor, the interval's length), which the loss coefficient absorbs; the
    symmetric part is a `Topology`'s `shared_ohm`. On SimBench's LV grids (0.1 V
    registers) it correlates 0.85–0.97 with the true shared resistances.

    `energies` (grid points × meters, `Blocks.intervals`), the meters' voltages (`volts`,
    or its `columns` in the order of `energies`' meters) and `master_volts` are taken at
    every grid point, not only at the ends of single-interval
    balance blocks: in a district of 120 meters each missing 1 % of its readings, under a
    tenth of the intervals are single blocks (every meter read at both ends), and the
    regression on those alone was too noisy to be chosen (bench.families, RU3). A meter's
    own missing voltages are interpolated in time (≤ a few % of its points); a point
    without the master's voltage, or where a meter's energy is unknown, is left out. The
    normal equations are sums over time (Σ y·yᵀ, Σ y·sagᵀ), as a per-day accumulation
    needs. None when too little is known: no master voltage, fewer points than four per
    meter. A meter whose voltage is missing at most points neither gets nor gives a sag
    (row and column 0).
    """
    p = energies.shape[1]
    if p == 0:
        return None
    where = np.arange(volts.shape[1]) if columns is None else np.asarray(columns)
    read = np.isfinite(volts).mean(axis=0)[where] >= 0.9
    if read.sum() < 2:
        return None
    sag = fill_linear(volts[:, where[read]], in_place=True)  # one copy, filled in place
    keep = (
        np.isfinite(master_volts) & np.isfinite(energies).all(axis=1) & np.isfinite(sag).all(axis=1)
    )
    count = int(keep.sum())
    if count < 4 * p:
        return None
    # Left-out points are zeroed rather than cut (no second copy): they add nothing to
    # the sums below, and the intercept's column counts only the kept ones.
    np.subtract(master_volts[:, None], sag, out=sag)
    sag[~keep] = 0.0
    x = np.where(keep[:, None], energies, 0.0)
    column_sums = x.sum(axis=0)
    # Normal equations of [x, 1] (a p × p solve, not an SVD), with a ridge of 1 % of a
    # typical meter's energy variance: a vacant household's column has next to none,
    # and unregularised its coefficients (noise over nothing) swamp everyone's.
    gram = np.empty((p + 1, p + 1))
    gram[:p, :p] = x.T @ x
    gram[:p, p] = gram[p, :p] = column_sums
    gram[p, p] = count
    variance = np.diag(gram)[:p] - column_sums**2 / count
    ridge = 0.01 * float(np.mean(variance))
    gram[np.arange(p), np.arange(p)] += max(ridge, 1e-12)
    rhs = np.empty((p + 1, sag.shape[1]))
    rhs[:p] = x.T @ sag
    rhs[p] = sag.sum(axis=0)
    coef = np.linalg.solve(gram, rhs)
    c = np.zeros((p, p))
    c[:, read] = coef[:p]
    shared: FloatArray = (c + c.T) / 2
    return shared


@dataclass(frozen=True)
class _PerInterval:
    """The customers' energies per grid interval over the blocks, and how to sum them back.

    The balance itself is solved on block sums (exact: no energy is invented), but the
    loss terms are second order in the energies: Σ_t S_t² over a block is not S² of its
    sum. With 1 % of readings missing, a district of 100 meters has under a third of its
    boundaries complete and most blocks span several intervals; each meter's own interval
    energies are known at all but ~1 % of them (`interval_energies`), so the squares are
    summed interval by interval. (Before: the block's sum spread like the master's interval
    energies — unstable with PV, where the master's net flow crosses zero inside a block,
    and blind to how each household's load moved inside it, which a per-cable loss needs.)
    """

    x: FloatArray  # (intervals, meters)
    starts: NDArray[np.int64]  # where each block's intervals begin in x

    @staticmethod
    def of(blocks: Blocks) -> _PerInterval:
        # Finite by construction: a block's ends are read by every meter, and each meter's
        # own gaps inside it are interpolated.
        x, _ = blocks.per_interval()
        lengths = blocks.lengths.astype(np.int64)
        return _PerInterval(x, np.cumsum(lengths) - lengths)

    def block_sums(self, values: FloatArray) -> FloatArray:
        out: FloatArray = np.add.reduceat(values, self.starts, axis=0)
        return out


def residual_autocorrelation(resid: FloatArray, lengths: FloatArray) -> float:
    """Lag-1 autocorrelation of the residuals, each scaled to one interval's variance.

    What a well-described balance leaves is the registers' rounding and the master's
    noise: independent from block to block, and rounding makes neighbours slightly
    negatively correlated (a register floored low in one interval reads high in the
    next): −0.2 to −0.5 on every family of bench.families where a loss model fits. A
    component no candidate model describes — street lighting that follows dusk and the
    weather, not the clock — changes slowly and makes neighbours alike: +0.4 to +0.6
    there. Such a component is not noise: the part of it that looks like some household's
    load is absorbed into that household's β and never reaches the residuals or any
    interval (bench.families, ac-light: 1–3 pp off with 70 % coverage). NaN below 3 blocks.
    """
    if len(resid) < 3:
        return float("nan")
    z = resid / np.sqrt(lengths)
    z = z - z.mean()
    denominator = float(np.sum(z * z))
    if denominator <= 0:
        return float("nan")
    return float(np.sum(z[1:] * z[:-1]) / denominator)


def _weights(blocks: Blocks, forgetting: float) -> tuple[FloatArray, FloatArray]:
    """(forgetting weight λ^age, regression weight λ^age / length) per block."""
    age = (blocks.end_index.max() - blocks.end_index).astype(np.float64)
    decay: FloatArray = forgetting**age
    weight: FloatArray = decay / blocks.lengths
    return decay, weight


@dataclass(frozen=True)
class _Shared:
    """What every candidate loss model shares: the meters' block of the normal equations."""

    x: FloatArray  # (n, p) meters' energies
    y: FloatArray
    w: FloatArray
    decay: FloatArray
    lengths: FloatArray
    b: FloatArray  # (p, p) inverse of the meters' block, prior included
    b1: FloatArray  # (p,) right-hand side of the meters' block, prior included
    theta1: FloatArray  # (p,) B·b1
    data_info: FloatArray
    prior: FloatArray


@dataclass(frozen=True)
class _Candidate:
    name: str
    kappa: float
    extra: str
    loss: FloatArray  # (n, k) loss columns
    u: FloatArray  # (p, k) B·a12
    s_inv: FloatArray  # (k, k) inverse Schur complement
    theta: FloatArray  # (p + k,)
    resid: FloatArray
    rss: float

    @property
    def k(self) -> int:
        return int(self.loss.shape[1])


def _shared(blocks: Blocks, cfg: FitConfig) -> _Shared:
    x = blocks.energy
    n_meters = x.shape[1]
    decay, w = _weights(blocks, cfg.forgetting)
    info = x.T @ (x * w[:, None])
    data_info = np.diag(info).copy()
    typical = float(np.mean(data_info)) / float(decay.sum()) if n_meters else 0.0
    prior: FloatArray = np.full(n_meters, cfg.ridge * max(typical, 1e-12))
    a11 = info + np.diag(prior)
    b = np.asarray(np.linalg.inv(a11), dtype=np.float64)
    b1: FloatArray = x.T @ (w * blocks.master) + prior  # prior toward β = 1
    return _Shared(
        x,
        blocks.master,
        w,
        decay,
        blocks.lengths.astype(np.float64),
        b,
        b1,
        b @ b1,
        data_info,
        prior,
    )


def _candidate(sh: _Shared, name: str, kappa: float, extra: str, loss: FloatArray) -> _Candidate:
    wl = loss * sh.w[:, None]
    a12 = sh.x.T @ wl  # (p, k)
    a22 = loss.T @ wl
    a22 = a22 + np.diag(1e-9 * np.maximum(np.diag(a22), 1e-12))  # keeps it invertible
    u = sh.b @ a12
    s_inv = np.asarray(np.linalg.inv(a22 - a12.T @ u), dtype=np.float64)
    theta2 = s_inv @ (wl.T @ sh.y - a12.T @ sh.theta1)
    theta1 = sh.theta1 - u @ theta2
    resid: FloatArray = sh.y - sh.x @ theta1 - loss @ theta2
    rss = float(np.sum(sh.decay * resid**2 / sh.lengths))
    return _Candidate(
        name, kappa, extra, loss, u, s_inv, np.concatenate([theta1, theta2]), resid, rss
    )


def _loss_columns(
    hours: FloatArray,
    q: FloatArray,
    extra: str,
    day_profile: FloatArray | None,
    drift: FloatArray,
) -> FloatArray | None:
    if extra == "":
        return np.column_stack([hours, q])
    if extra == "time_of_day":
        if day_profile is None:
            return None
        used = day_profile[:, day_profile.sum(axis=0) > 0]
        return np.column_stack([used, q])
    return np.column_stack([hours, q, hours * drift, q * drift])


def _meter_variances(sh: _Shared, c: _Candidate, z0: FloatArray) -> FloatArray:
    """Var(β_i) per meter: the larger of the model-based sandwich and Newey–West HAC."""
    p = sh.x.shape[1]
    dof = max(float(sh.decay.sum()) - p - c.k, 1.0)
    sigma2 = float(np.sum(sh.decay * c.resid**2 / sh.lengths)) / dof
    # Rows of A⁻¹ for the meters, applied to each block: Z = X·B + (X·U − L)·S⁻¹·Uᵀ.
    z = z0 + (sh.x @ c.u - c.loss) @ (c.s_inv @ c.u.T)
    model = sigma2 * ((z * z).T @ (sh.w**2 * sh.lengths))
    score = z * (sh.w * c.resid)[:, None]
    hac = np.sum(score * score, axis=0)
    for lag in range(1, min(HAC_LAGS, len(score) - 1) + 1):
        weight = 1.0 - lag / (HAC_LAGS + 1)
        hac += 2.0 * weight * np.sum(score[lag:] * score[:-lag], axis=0)
    variance: FloatArray = np.maximum(model, hac)
    return variance


def fit_balance(
    blocks: Blocks,
    cfg: FitConfig,
    day_profile: FloatArray | None = None,
    kappas: tuple[float, ...] = KAPPAS,
    topologies: Sequence[Topology] = (),
) -> DistrictFit | None:
    """Solve the district's balance; None when there are fewer blocks than unknowns.

    `day_profile` (blocks × 24, from `day_hours`) lets the fixed loss differ by time of
    day among the candidate loss models; without it that candidate is left out.
    `kappas` is the grid of I²R models tried (`(0.0,)`: the customer current only).
    `topologies` are what is known of where the meters hang on the feeder (learnt from
    their voltages, told by the registry): each adds a loss model that puts each
    household's loss where its cable is. Without any, random splits into branches
    widen the intervals instead (`_branch_candidates`).
    """
    n_meters = len(blocks.meters)
    if len(blocks.master) <= n_meters + 2 + 4:
        return None
    sh = _shared(blocks, cfg)
    hours = np.asarray(blocks.lengths * cfg.step_hours, dtype=np.float64)
    span = float(blocks.end_index.max() - blocks.end_index.min()) or 1.0
    drift = (blocks.end_index - blocks.end_index.min()) / span - 0.5
    per = _PerInterval.of(blocks)
    step = cfg.step_hours
    # First fit: the I²R loss on the customers' metered current, Σ_t S_t² per block.
    load = per.x.sum(axis=1)
    first = _candidate(sh, "κ=0", 0.0, "", np.column_stack([hours, per.block_sums(load**2) / step]))
    # The loss follows the true current: the customers' consumption as the first fit
    # corrects it (Σ β̂·y, not Σ y: a few meters 3 % off at 8 % loss move Σy² visibly),
    # and ŷ0 − S, the losses that fit explains, per interval (noise-free: no y0 in it).
    drawn = per.x @ first.theta[:n_meters]
    losses = first.theta[n_meters] * step + first.theta[n_meters + 1] * load**2 / step
    q0, q1, q2 = (
        per.block_sums(drawn**2),
        per.block_sums(2.0 * drawn * losses),
        per.block_sums(losses**2),
    )
    candidates = []
    for extra in EXTRAS:
        for kappa in kappas if extra == "" else kappas[:: max(1, len(kappas) // 2)]:
            q = (q0 + kappa * q1 + kappa**2 * q2) / step
            loss = _loss_columns(hours, q, extra, day_profile, drift)
            if loss is None or len(blocks.master) <= n_meters + loss.shape[1]:
                continue
            name = f"κ={kappa:g}" + (f" + {extra.replace('_', ' ')}" if extra else "")
            candidates.append(_candidate(sh, name, kappa, extra, loss))
    base = min((c for c in candidates if c.extra == ""), key=lambda c: c.rss)
    for topology in topologies:
        topo = _topology_candidate(sh, base, per, hours, step, topology)
        if topo is not None:
            candidates.append(topo)
    if not topologies and n_meters >= MIN_METERS_FOR_BRANCHES:
        candidates += _branch_candidates(sh, base, per, hours, step)
    best_rss = min(c.rss for c in candidates)
    richest = min(candidates, key=lambda c: (c.rss, c.k))
    dof = max(float(sh.decay.sum()) - n_meters - richest.k, 1.0)
    sigma2 = max(best_rss / dof, 1e-300)
    plausible = [c for c in candidates if _plausible(c, richest, sigma2)]
    # The point estimate averages the plausible models by their likelihood and size
    # (Akaike weights): where the data tell the loss models apart it is the best one's,
    # where they cannot (the κ's shift the β's along a direction the residuals barely
    # see) it does not follow whichever the noise favoured.
    score = np.array([(c.rss - best_rss) / sigma2 + 2.0 * c.k for c in plausible])
    weights = np.exp(-0.5 * (score - score.min()))
    weights /= weights.sum()
    misfit = _misfit(candidates, richest, sigma2)
    # The sampling variance of the β's barely changes from one loss model to the next
    # (only k ≤ 5 of p + k columns differ); it is computed once, for the model of most
    # weight, and serves every plausible one: the models differ in where they put the
    # β's, which the union of intervals carries. (Per model it cost ~3 ms a candidate.)
    heaviest = plausible[int(np.argmax(weights))]
    variance = _meter_variances(sh, heaviest, sh.x @ sh.b)
    per_model = [(c, variance) for c in plausible]
    return _summarise(blocks, sh, per_model, weights, misfit, cfg)


@dataclass(frozen=True)
class Topology:
    """Where a district's meters hang on its feeder, as far as it is known.

    `shared_ohm` (meters × meters, in `blocks.meters` order): the resistance (or cable
    length: the scale is the loss coefficient's) of the path any two meters' households
    share from the transformer; row and column 0 for a meter nothing is known of.
    `branches` (per meter, -1 unknown): the cable leaving the transformer it hangs on,
    when only that is known. `source` names it in the loss model ("voltages", "registry").
    """

    source: str
    shared_ohm: FloatArray | None = None
    branches: NDArray[np.int64] | None = None


@dataclass(frozen=True)
class FeederPlace:
    """Where the registry says a meter hangs: the cable leaving the transformer's board
    (`feeder_branch`) and, when known, the cable length from the transformer to its
    connection point (`feeder_distance_m`)."""

    branch: str
    distance_m: float | None = None


def registry_topology(meters: Sequence[str], places: Mapping[str, FeederPlace]) -> Topology | None:
    """The feeder's topology as far as the registry tells it, in `meters` order.

    Branch and distance for every meter placed on a branch: the shared path of two
    households on the same branch is taken as the nearer one's cable length (a radial
    cable along a street, houses hanging off it), none between branches. On SimBench's
    LV grids that correlates 0.93–1.00 with the true shared resistances and estimates as
    well as they do (bench.families, `ac+topo`). Branch labels alone: one free
    resistance per branch. None when fewer than two meters are placed. A meter the
    registry does not place joins no branch (its loss stays with the district-wide term).
    """
    known = [places.get(m) for m in meters]
    names = sorted({k.branch for k in known if k is not None})
    if sum(k is not None for k in known) < 2:
        return None
    label = {name: i for i, name in enumerate(names)}
    branch = np.array([label[k.branch] if k is not None else -1 for k in known], dtype=np.int64)
    placed = branch >= 0
    distance = np.array(
        [k.distance_m if k is not None and k.distance_m is not None else np.nan for k in known]
    )
    if not np.isfinite(distance[placed]).all():
        return Topology("registry", branches=branch)
    d = np.where(placed, np.nan_to_num(distance), 0.0)
    same = (branch[:, None] == branch[None, :]) & placed[:, None] & placed[None, :]
    shared: FloatArray = np.where(same, np.minimum(d[:, None], d[None, :]), 0.0)
    return Topology("registry", shared_ohm=shared)


def _topology_candidate(
    sh: _Shared,
    base: _Candidate,
    per: _PerInterval,
    hours: FloatArray,
    step: float,
    topology: Topology,
) -> _Candidate | None:
    """The best plain I²R term beside the feeder's own loss terms.

    With shared resistances M: Σ_segments R·I² = y'·M·y per interval, one column that puts
    each household's loss where its cable is. With branches only: Σ_b r_b·(Σ_{i∈b} y_i)²,
    one free resistance per branch (every household of a branch taken at its end: what
    a label alone can say). The plain term stays: the transformer's own copper loss
    follows the total current, which no cable's resistance (nor a voltage measured at
    its low-voltage side) carries, and with PV the two part ways: at noon the area's net
    flow is small while its branches carry exports one way and loads the other.
    """
    if topology.shared_ohm is not None:
        # y'·M·y for every interval: the one product of the fit as large as the data
        # (intervals × meters × meters), in single precision (twice as fast; 1e-7 relative
        # is far below what the registers' 0.001 kWh resolution leaves in a regressor).
        x = per.x.astype(np.float32)
        products = np.einsum("ij,ij->i", x @ topology.shared_ohm.astype(np.float32), x)
        columns = per.block_sums(products.astype(np.float64))[:, None]
    elif topology.branches is not None:
        labels = np.unique(topology.branches[topology.branches >= 0])
        if len(labels) == 0:
            return None
        onehot = (topology.branches[:, None] == labels[None, :]).astype(np.float64)
        columns = per.block_sums((per.x @ onehot) ** 2)
    else:
        return None
    loss = np.column_stack([hours, base.loss[:, 1], columns / step])
    if len(sh.y) <= sh.x.shape[1] + loss.shape[1] + 4:
        return None
    kind = "topology" if topology.shared_ohm is not None else "branches"
    return _candidate(sh, f"{base.name} + {kind} ({topology.source})", base.kappa, "topology", loss)


def _branch_candidates(
    sh: _Shared, base: _Candidate, per: _PerInterval, hours: FloatArray, step: float
) -> list[_Candidate]:
    """Loss models with a per-branch term for random splits of the district's households.

    On a real feeder a household far down a long cable causes more loss per kWh than one
    near the transformer; with one district-wide γ its β absorbs the difference (up to
    0.6 pp on SimBench's LV grids, bench.families). Where neither the registry nor the
    voltages tell the topology, a few plausible ones — 2 to 4 branches, households drawn
    into them, trunk resistances within a factor of four — each add Σ_b r_b·(Σ_{i∈b} y_i)²
    to the best plain model. Those the data cannot reject join the union of intervals:
    wider intervals, where the loss allocation is not known, instead of a confident bias.
    The draws depend only on the number of meters: the same district, the same models.
    """
    q = base.loss[:, 1]
    n_meters = sh.x.shape[1]
    rng = np.random.default_rng(n_meters)
    out = []
    for draw in range(BRANCH_DRAWS):
        groups = np.asarray(rng.integers(0, int(rng.integers(2, 5)), n_meters), dtype=np.int64)
        onehot = (groups[:, None] == np.arange(int(groups.max()) + 1)[None, :]).astype(float)
        trunk = rng.uniform(0.5, 2.0, onehot.shape[1])
        q_branch = per.block_sums(((per.x @ onehot) ** 2) @ trunk) / step
        loss = np.column_stack([hours, q, q_branch])
        out.append(_candidate(sh, f"{base.name} + branches {draw}", base.kappa, "branches", loss))
    return out


def _plausible(c: _Candidate, best: _Candidate, sigma2: float) -> bool:
    return (c.rss - best.rss) / sigma2 <= chi2_quantile(CHI2_95, 0.95, best.k - c.k)


def _misfit(candidates: list[_Candidate], best: _Candidate, sigma2: float) -> str:
    """A finding when every plain loss model (one fixed loss, one I²R term — per-branch when
    the topology is known or learnt from voltages) is rejected."""
    plain_kinds = ("", "topology")
    if best.extra in plain_kinds:
        return ""
    plain = min((c for c in candidates if c.extra in plain_kinds), key=lambda c: c.rss)
    excess = (plain.rss - best.rss) / sigma2
    if excess <= chi2_quantile(CHI2_999, 0.999, best.k - plain.k):
        return ""
    what = {
        "time_of_day": "the fixed loss changes with the time of day (an unmetered night "
        "load such as street lighting?)",
        "drift": "the losses drift over the window",
        "topology": "the loss follows the feeder's branches",
        "branches": "the loss follows groups of households (feeder branches?)",
    }[best.extra]
    return (
        f"residuals show structure the plain loss model cannot explain: {what}; "
        f"the best plain model fits worse by {excess:.0f} σ̂²"
    )


def _summarise(
    blocks: Blocks,
    sh: _Shared,
    per_model: list[tuple[_Candidate, FloatArray]],
    weights: FloatArray,
    misfit: str,
    cfg: FitConfig,
) -> DistrictFit:
    z = NormalDist().inv_cdf(0.5 + cfg.confidence / 2)
    n_int = blocks.n_intervals
    p = len(blocks.meters)
    u_b = cfg.master_uncertainty_pct
    errors = []
    model_se = []
    for c, var in per_model:
        betas = c.theta[:p]
        ok = betas > 0
        safe = np.where(ok, betas, 1.0)
        errors.append(np.where(ok, 100.0 * (1.0 / safe - 1.0), np.nan))
        model_se.append(np.where(ok, 100.0 * np.sqrt(np.maximum(var, 0.0)) / safe**2, np.inf))
    e_all = np.vstack(errors)
    se_all = np.vstack(model_se)
    chosen = per_model[int(np.argmax(weights))][0]
    # The averaged β and the spread of the models around it (law of total variance).
    betas_all = np.vstack([c.theta[:p] for c, _ in per_model])
    mean_beta = weights @ betas_all
    chosen_var = weights @ np.vstack([v for _, v in per_model]) + weights @ (
        (betas_all - mean_beta) ** 2
    )
    corr = _confounded(sh.b, blocks.meters)
    # Per-meter figures as whole arrays, then plain floats: a Python loop of numpy
    # reductions per meter cost more than the solve.
    usable = (mean_beta > 0) & np.isfinite(e_all).all(axis=0)
    safe = np.where(usable, mean_beta, 1.0)
    error = np.where(usable, 100.0 * (1.0 / safe - 1.0), np.nan)
    se_rel = np.where(usable, 100.0 * np.sqrt(np.maximum(chosen_var, 0.0)) / safe**2, np.inf)
    # The ridge prior pulls each β toward 1 by its share of the β's precision given all
    # the others, s = B_ii·prior_i: small for a meter with its own pattern, large for one
    # much like its neighbours, where a 5 % error reads as 2–3 % with a narrow sandwich
    # interval that never sees the pull. What the data alone say, β_data = 1 +
    # (β̂ − 1)/(1 − s), joins the plausible estimates: the interval and the loss-model
    # rule then hold it too.
    pull = np.clip(np.diag(sh.b) * sh.prior, 0.0, 0.9)
    beta_data = 1.0 + (safe - 1.0) / (1.0 - pull)
    e_data = np.where(
        usable & (beta_data > 0),
        100.0 * (1.0 / np.where(beta_data > 0, beta_data, 1.0) - 1.0),
        np.nan,
    )
    e_data = np.where(np.isfinite(e_data), e_data, error)

    def bounds(u: float) -> tuple[FloatArray, FloatArray]:
        """The union of every plausible estimate's interval, with u in quadrature."""
        half_all = z * np.sqrt(se_all**2 + u**2)
        half = z * np.sqrt(se_rel**2 + u**2)
        low = np.min(e_all - half_all, axis=0)
        high = np.max(e_all + half_all, axis=0)
        low = np.minimum(np.minimum(low, error - half), e_data - half)
        high = np.maximum(np.maximum(high, error + half), e_data + half)
        return np.where(usable, low, np.nan), np.where(usable, high, np.nan)

    # Each estimate is the meter's error relative to the master's (β = (1 + e0)/(1 + e)),
    # so its absolute error — what the in-service limit is about, and what a regulator
    # signs — carries the master's own error e0 too: its Type B (the class's MPE/√3 unless
    # the rules give a calibration's figure) in quadrature, as an independent component
    # of each meter's uncertainty (GUM). It is one number for the whole district: it moves
    # every estimate of the district together and says nothing about how well the data
    # resolve this meter against its neighbours. So decisions against the limit use the
    # absolute interval, while whether a meter is observable at all is judged on the
    # relative one (`relative_ci_pct`): a loose master class must not make the meters of
    # its district unobservable (bench.families: 0.57 of the 0.74 pp median half-width
    # on the project's simulator is the master's).
    low, high = bounds(u_b)
    rel_low, rel_high = bounds(0.0)
    se = np.where(usable, np.sqrt(se_rel**2 + u_b**2), np.inf)
    e_low = np.where(usable, np.minimum(e_all.min(axis=0), e_data), np.nan)
    e_high = np.where(usable, np.maximum(e_all.max(axis=0), e_data), np.nan)
    ratio = sh.data_info / sh.prior
    mean_kwh = blocks.energy.sum(axis=0) / max(n_int, 1)
    columns = zip(
        blocks.meters,
        mean_beta.tolist(),
        error.tolist(),
        low.tolist(),
        high.tolist(),
        se.tolist(),
        ratio.tolist(),
        mean_kwh.tolist(),
        e_low.tolist(),
        e_high.tolist(),
        _max_correlation(sh.b).tolist(),
        rel_low.tolist(),
        rel_high.tolist(),
        strict=True,
    )
    meters = {
        m: MeterEstimate(
            m, b, e, (lo, hi), sd, r, n_int, kwh, (el, eh), corr.get(m, ()), mc, (rl, rh)
        )
        for m, b, e, lo, hi, sd, r, kwh, el, eh, mc, rl, rh in columns
    }
    y, decay, resid = blocks.master, sh.decay, chosen.resid
    weighted_mean = float(np.sum(decay * y) / decay.sum())
    ss_tot = float(np.sum(decay * (y - weighted_mean) ** 2))
    ss_res = float(np.sum(decay * resid**2))
    per_interval = y / blocks.lengths
    rms = float(np.sqrt(np.sum(decay * (resid / blocks.lengths) ** 2) / decay.sum()))
    loss = chosen.theta[p:]
    fixed = (
        float(loss[0])
        if chosen.extra != "time_of_day"
        else float(
            np.sum(loss[:-1] * chosen.loss[:, :-1].sum(axis=0))
            / max(float(chosen.loss[:, :-1].sum()), 1e-12)
        )
    )
    gamma = float(loss[1]) if chosen.extra != "time_of_day" else float(loss[-1])
    return DistrictFit(
        meters=meters,
        fixed_loss_kw=fixed,
        gamma_per_kw=gamma,
        line_loss_pct=line_loss_pct(blocks),
        residual_rms_pct=100.0 * rms / max(float(np.mean(np.abs(per_interval))), 1e-12),
        r_squared=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        n_blocks=len(y),
        n_intervals=n_int,
        effective_intervals=float(decay.sum() ** 2 / np.sum(decay**2)),
        loss_model=chosen.name,
        kappa=chosen.kappa,
        plausible_models=tuple(c.name for c, _ in per_model),
        misfit=misfit,
        master_uncertainty_pct=u_b,
        residual_autocorrelation=residual_autocorrelation(resid, sh.lengths),
    )


def _max_correlation(b: FloatArray) -> FloatArray:
    d = np.sqrt(np.maximum(np.diag(b), 1e-300))
    corr = np.abs(b / d[:, None] / d[None, :])
    np.fill_diagonal(corr, 0.0)
    out: FloatArray = corr.max(axis=1) if len(corr) > 1 else np.zeros(len(corr))
    return out


def _confounded(b: FloatArray, meters: list[str]) -> dict[str, tuple[str, ...]]:
    """Per meter, the meters whose β its own cannot be told apart from, most alike first.

    The posterior correlation of β_i and β_j is −B_ij/√(B_ii·B_jj) (B the inverse of the
    meters' normal matrix): near −1 for a household whose load is a scaled copy of
    another's, whatever the noise.
    """
    d = np.sqrt(np.maximum(np.diag(b), 1e-300))
    corr = -b / d[:, None] / d[None, :]
    np.fill_diagonal(corr, 0.0)
    out = {}
    for i, meter in enumerate(meters):
        row = np.abs(corr[i])
        hits = np.flatnonzero(row > CONFOUNDED_CORRELATION)
        if len(hits):
            order = hits[np.argsort(-row[hits])][:3]
            out[meter] = tuple(meters[j] for j in order)
    return out
