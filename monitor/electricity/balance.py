"""The energy-balance estimator of docs/metrology.md, solved by exponentially weighted ridge LS.

Per block j of a district (see `intervals.blocks`):

    y0_j = Σ_i β_i·y_ij + L_fix·T_j + γ·Q_j + ε_j,     β_i = 1/(1 + e_i)

with T_j the block's hours and Q_j = Σ S(t)²/Δt over its intervals, S the
customers' metered consumption (see `load_squares` for why not y0²).

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

Uncertainty: block noise variance is taken proportional to block length;
the covariance is the sandwich A⁻¹·X'W Σ W X·A⁻¹ (the forgetting weights are not
inverse variances), with σ² from the weighted residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from statistics import NormalDist

import numpy as np

from monitor.electricity.intervals import Blocks, FloatArray, Grid

# Below this ratio of a meter's data information to its prior information the
# estimate is mostly prior: the meter is not observable.
MIN_INFORMATION_RATIO = 10.0
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class FitConfig:
    """Estimator settings (from `rules.elec.estimation`)."""

    forgetting: float = 0.999
    ridge: float = 1.0
    confidence: float = 0.95
    step_hours: float = 0.25


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

    @property
    def ci_halfwidth_pct(self) -> float:
        return (self.error_ci_pct[1] - self.error_ci_pct[0]) / 2


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


def line_loss_pct(blocks: Blocks) -> float:
    """Statistical line loss: (master − Σ customers) / master over the blocks, in percent."""
    supplied = float(blocks.master.sum())
    if supplied <= 0:
        return float("nan")
    return 100.0 * (supplied - float(blocks.energy.sum())) / supplied


@dataclass(frozen=True)
class DailyLoss:
    """One local day's statistical line loss, over the blocks that end in it."""

    day: date
    supplied_kwh: float  # what the master meter measured
    delivered_kwh: float  # what the customer meters measured
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
    delivered = blocks.energy.sum(axis=1)
    sums: dict[date, list[float]] = {}
    for k, h in enumerate(where.tolist()):
        acc = sums.setdefault(dates[h], [0.0, 0.0, 0])
        acc[0] += float(blocks.master[k])
        acc[1] += float(delivered[k])
        acc[2] += int(blocks.lengths[k])
    return [DailyLoss(d, a[0], a[1], int(a[2])) for d, a in sorted(sums.items())]


def load_squares(blocks: Blocks) -> FloatArray:
    """Σ_t S(t)² per block, S = the customers' metered consumption in interval t.

    The I²R loss follows the current the customers draw. The textbook form writes it with
    the master's y0², but y0 includes the fixed loss, and squaring it folds a
    term 2·γ·L_fix·Σx, collinear with the β's, into the regressor: every error
    comes out shifted by about 2·γ·L_fix/Δt (0.1–0.3 % on simulated feeders).
    Inside a block the customers' total is distributed like the master's
    interval energies, which the master (read at every boundary it has) gives.
    """
    consumption = blocks.energy.sum(axis=1)
    share = np.divide(
        consumption, blocks.master, out=np.zeros_like(consumption), where=blocks.master > 0
    )
    squares: FloatArray = blocks.master_sq * share**2
    return squares


def _design(blocks: Blocks, step_hours: float) -> FloatArray:
    hours = blocks.lengths * step_hours
    return np.column_stack([blocks.energy, hours, load_squares(blocks) / step_hours])


def _weights(blocks: Blocks, forgetting: float) -> tuple[FloatArray, FloatArray]:
    """(forgetting weight λ^age, regression weight λ^age / length) per block."""
    age = (blocks.end_index.max() - blocks.end_index).astype(np.float64)
    decay = forgetting**age
    return decay, decay / blocks.lengths


def fit_balance(blocks: Blocks, cfg: FitConfig) -> DistrictFit | None:
    """Solve the district's balance; None when there are fewer blocks than unknowns."""
    n_meters = len(blocks.meters)
    p = n_meters + 2
    if len(blocks.master) <= p:
        return None
    x = _design(blocks, cfg.step_hours)
    y = blocks.master
    decay, w = _weights(blocks, cfg.forgetting)
    xw = x * w[:, None]
    info = x.T @ xw
    data_info = np.diag(info).copy()
    prior = np.zeros(p)
    typical = float(np.mean(data_info[:n_meters])) / float(decay.sum()) if n_meters else 0.0
    prior[:n_meters] = cfg.ridge * max(typical, 1e-12)
    prior[n_meters:] = 1e-9 * np.maximum(data_info[n_meters:], 1e-12)  # keeps A invertible
    theta0 = np.concatenate([np.ones(n_meters), np.zeros(2)])
    a = info + np.diag(prior)
    theta = np.linalg.solve(a, xw.T @ y + prior * theta0)
    resid = y - x @ theta
    dof = max(float(decay.sum()) - p, 1.0)
    sigma2 = float(np.sum(decay * resid**2 / blocks.lengths)) / dof
    a_inv = np.linalg.inv(a)
    middle = x.T @ (x * (w**2 * blocks.lengths * sigma2)[:, None])
    cov = a_inv @ middle @ a_inv
    return _summarise(blocks, theta, cov, data_info, prior, resid, decay, cfg)


def _summarise(
    blocks: Blocks,
    theta: FloatArray,
    cov: FloatArray,
    data_info: FloatArray,
    prior: FloatArray,
    resid: FloatArray,
    decay: FloatArray,
    cfg: FitConfig,
) -> DistrictFit:
    z = NormalDist().inv_cdf(0.5 + cfg.confidence / 2)
    n_int = blocks.n_intervals
    se_beta = np.sqrt(np.maximum(np.diag(cov), 0.0))
    meters = {}
    for i, meter in enumerate(blocks.meters):
        meters[meter] = _meter(
            meter,
            float(theta[i]),
            float(se_beta[i]),
            z,
            float(data_info[i] / prior[i]),
            n_int,
            float(blocks.energy[:, i].sum()) / max(n_int, 1),
        )
    y = blocks.master
    weighted_mean = float(np.sum(decay * y) / decay.sum())
    ss_tot = float(np.sum(decay * (y - weighted_mean) ** 2))
    ss_res = float(np.sum(decay * resid**2))
    per_interval = y / blocks.lengths
    rms = float(np.sqrt(np.sum(decay * (resid / blocks.lengths) ** 2) / decay.sum()))
    return DistrictFit(
        meters=meters,
        fixed_loss_kw=float(theta[-2]),
        gamma_per_kw=float(theta[-1]),
        line_loss_pct=line_loss_pct(blocks),
        residual_rms_pct=100.0 * rms / max(float(np.mean(per_interval)), 1e-12),
        r_squared=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        n_blocks=len(y),
        n_intervals=n_int,
        effective_intervals=float(decay.sum() ** 2 / np.sum(decay**2)),
    )


def _meter(
    meter: str, beta: float, se_beta: float, z: float, ratio: float, n: int, mean_kwh: float
) -> MeterEstimate:
    if beta <= 0:  # meaningless: the meter cannot be carrying negative energy
        return MeterEstimate(
            meter,
            beta,
            float("nan"),
            (float("nan"), float("nan")),
            float("inf"),
            ratio,
            n,
            mean_kwh,
        )
    error = 100.0 * (1.0 / beta - 1.0)
    se = 100.0 * se_beta / beta**2  # delta method for e = 1/β − 1
    return MeterEstimate(
        meter, beta, error, (error - z * se, error + z * se), se, ratio, n, mean_kwh
    )
