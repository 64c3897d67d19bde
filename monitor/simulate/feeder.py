"""Test-bed feeders: true energies from any physics, turned into what meters would report.

The estimator must not be tuned to one generator. A feeder here is only the true energy
each household drew and fed back per interval, and what the transformer put into the area
(`FeederEnergy`); where that came from is someone else's business: the project's own
simulator (`from_model`, either loss model of `ElecModel`) or an AC power flow on a real
low-voltage topology (`monitor.simulate.acflow`). `meter_district` then plays the meters:
each customer meter reads (1 + e)·x on its forward and reverse registers, floored to the
register resolution; the master reads what left the transformer with its own class error;
readings go missing at random. The result is the `Series` a store would return, the
registry rows and the truth, so the evaluation core runs on it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt

from monitor.core.ports import Series
from monitor.core.registry import MeterRow
from monitor.simulate.elec import ElecFleet
from monitor.simulate.spec import FleetSpec

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FeederEnergy:
    """True energies of one area per interval: households (T, n) and the master (T,).

    `imports_kwh` is what each household drew from the grid, `exports_kwh` what it fed
    back (PV), `master_kwh` the net energy into the area at the transformer (negative
    when the area exports). `distance_ohm` is each household's series resistance from the
    transformer (NaN when the physics has no topology), `branch` the cable leaving the
    transformer it hangs on, `distance_m` the cable length to it (what a registry's
    `feeder_branch` and `feeder_distance_m` would say), `shared_ohm` how much of their
    paths two households share.
    """

    name: str
    start_ms: int
    interval_s: int
    households: list[str]
    imports_kwh: FloatArray
    exports_kwh: FloatArray
    master_kwh: FloatArray
    distance_ohm: FloatArray
    branch: list[str]
    facts: dict[str, float] = field(default_factory=dict)
    shared_ohm: FloatArray | None = None  # (n, n) resistance of the path two households share
    volts: FloatArray | None = None  # (T, n + 1) voltage at each household, then the master
    distance_m: FloatArray | None = None  # cable length from the transformer to each household

    @property
    def steps(self) -> int:
        """Intervals covered."""
        return int(self.master_kwh.shape[0])

    def line_loss_pct(self) -> float:
        """(into the area − net household use) / into the area, in percent."""
        net = float(self.imports_kwh.sum() - self.exports_kwh.sum())
        supplied = float(self.master_kwh.sum())
        return 100.0 * (supplied - net) / supplied if supplied > 0 else math.nan


@dataclass(frozen=True)
class MeterSpec:
    """How the meters of a test-bed district err and report."""

    resolution_kwh: float = 0.001
    missing_rate: float = 0.01
    clean_error_sd_pct: float = 0.5
    clean_error_clip_pct: float = 1.5
    beyond_share: float = 0.05
    beyond_error_pct: tuple[float, float] = (4.0, 6.0)
    master_error_sd_pct: float = 0.1
    customer_class: str = "2"
    master_class: str = "0.5S"


@dataclass(frozen=True)
class District:
    """One district as the store would return it, with the truth beside it."""

    name: str
    master: str
    series: dict[str, Series]
    rows: dict[str, MeterRow]
    true_pct: dict[str, float]
    start_ms: int
    end_ms: int
    master_true_pct: float
    energy: FeederEnergy


def meter_district(energy: FeederEnergy, spec: MeterSpec, seed: int) -> District:
    """Meters on a feeder: errors drawn from `seed`, registers, missing readings, currents."""
    rng = np.random.default_rng([seed, 2])
    n, steps = len(energy.households), energy.steps
    sd, clip = spec.clean_error_sd_pct / 100, spec.clean_error_clip_pct / 100
    error = np.clip(rng.normal(0.0, sd, n), -clip, clip)
    low, high = spec.beyond_error_pct
    beyond = rng.random(n) < spec.beyond_share
    error = np.where(beyond, rng.uniform(low, high, n) / 100 * rng.choice([-1.0, 1.0], n), error)
    master_error = float(rng.normal(0.0, spec.master_error_sd_pct / 100))

    forward = np.vstack([energy.imports_kwh.T, np.maximum(energy.master_kwh, 0.0)[None, :]])
    reverse = np.vstack([energy.exports_kwh.T, np.maximum(-energy.master_kwh, 0.0)[None, :]])
    factor = np.concatenate([1.0 + error, [1.0 + master_error]])[:, None]
    res = spec.resolution_kwh
    fwd_reg = _registers(factor * forward, rng.uniform(2_000, 30_000, n + 1), res)
    rev_reg = _registers(factor * reverse, np.zeros(n + 1), res)
    hours = energy.interval_s / 3600
    # A reading at boundary j carries the power of the interval that ended there.
    power = (forward - reverse) / hours
    at_reading = np.concatenate([power[:, :1], power], axis=1)
    if energy.volts is not None:  # the physics' own voltages, read to 0.1 V
        own = np.concatenate([energy.volts[:1], energy.volts], axis=0).T
        volts = np.round(own + rng.normal(0.0, 0.05, own.shape), 1)
    else:
        volts = 230.0 - 0.3 * at_reading + rng.normal(0.0, 0.5, at_reading.shape)
    amps = np.abs(at_reading) * 1000.0 / volts
    amps[n] /= 3.0  # the master is three-phase
    keep = rng.random((n + 1, steps + 1)) >= spec.missing_rate

    name = energy.name
    ids = [f"{name}-{h}" for h in energy.households] + [f"{name}-M"]
    ts_all = energy.start_ms + np.arange(steps + 1, dtype=np.int64) * energy.interval_s * 1000
    series = {}
    for i, meter in enumerate(ids):
        mask = keep[i]
        series[meter] = Series(
            ts_all[mask],
            {
                "energy_kwh": fwd_reg[i, mask],
                "reverse_kwh": rev_reg[i, mask],
                "current_a": amps[i, mask],
                "voltage_v": volts[i, mask],
                "clock_offset_s": np.zeros(int(mask.sum())),
            },
        )
    rows = {
        meter: MeterRow(
            meter_id=meter,
            kind="elec",
            role="master" if meter == ids[-1] else "customer",
            district=name,
            lot="TB-MASTER" if meter == ids[-1] else "TB-CUSTOMER",
            accuracy_class=spec.master_class if meter == ids[-1] else spec.customer_class,
            installed_on=date(2020, 3, 1),
            period_years=6 if meter == ids[-1] else 8,
        )
        for meter in ids
    }
    truth = {meter: 100.0 * float(error[i]) for i, meter in enumerate(ids[:-1])}
    return District(
        name,
        ids[-1],
        series,
        rows,
        truth,
        int(ts_all[0]),
        int(ts_all[-1]),
        100.0 * master_error,
        energy,
    )


def _registers(energy: FloatArray, start: FloatArray, resolution: float) -> FloatArray:
    """Cumulative registers floored to the resolution: rounding never invents energy."""
    cum = np.empty((energy.shape[0], energy.shape[1] + 1))
    cum[:, 0] = start
    np.cumsum(energy, axis=1, out=cum[:, 1:])
    cum[:, 1:] += start[:, None]
    out: FloatArray = np.floor(cum / resolution) * resolution
    return out


def from_model(spec: FleetSpec, district: int, first_k: int, steps: int) -> FeederEnergy:
    """One district of the project's own simulator (`ElecModel`) as a test-bed feeder.

    The loss follows `spec.line_loss_model`; households and losses are those the fleet
    of `spec` would publish, interval k covering [k·Δt, (k+1)·Δt).
    """
    model = ElecFleet(spec).model
    members = np.flatnonzero(model.district_of == district)
    x = np.empty((steps, len(members)))
    master = np.empty(steps)
    for j in range(steps):
        energy, inflow = model.energy(first_k + j)
        x[j] = energy[members]
        master[j] = inflow[district]
    name = f"{'T' if spec.line_loss_model == 'trunk' else 'O'}{spec.seed % 1000:03d}{district:02d}"
    return FeederEnergy(
        name=name,
        start_ms=first_k * spec.interval_ms,
        interval_s=spec.interval_s,
        households=[f"{i:03d}" for i in range(len(members))],
        imports_kwh=x,
        exports_kwh=np.zeros_like(x),
        master_kwh=master,
        distance_ohm=np.full(len(members), np.nan),
        branch=["" for _ in members],
        facts={
            "fixed_loss_kw": float(model.fixed_loss_kw[district]),
            "gamma_per_kw": float(model.gamma_per_kw[district]),
        },
    )
