"""AC power-flow feeders on SimBench low-voltage grids: physics this project did not write.

Needs the `testbed` extra (pandapower, simbench). A SimBench LV grid gives a real-world
derived topology (cables, transformer, which household hangs where) and a year of
15-minute standard load profiles. `generate` draws one district from it:

- every household (SimBench load) gets its own profile: its SimBench profile type read a
  few days and up to ±2 h away from the others, scaled by its own factor and multiplied
  by its own day factor and interval noise, so households are alike but not collinear;
- optionally PV prosumers (a share of households with a rooftop PV of their own size,
  following the grid's PV profile with a little noise of their own: reverse registers);
- each meter's own consumption (~1.5 W, drawn upstream of its register) as a fixed loss,
  and optionally unmetered street lighting on at night;
- pandapower's network model (admittance matrix, transformer with its magnetising
  branch, cables' π model) solved for every interval; the master meter reads the
  active power that leaves the transformer into the area.

The solve: pandapower's `runpp` costs ~0.1–0.3 s per interval here (its per-call set-up
dominates on a 100-bus grid), a month of quarter hours ≈ 10 minutes. The same equations
— pandapower's own bus admittance matrix, constant-power loads, the slack bus at the
external grid's voltage — are solved for all intervals at once by the Z-bus fixed-point
iteration V = Z·(conj(S/V) − Y_s·V_s), vectorised over time; every solve checks its
power mismatch with that matrix, and `check_against_pandapower` compares it with
`runpp` on chosen intervals (tests/test_acflow.py does, and every generated feeder
records the largest difference in its facts).
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.simulate.feeder import FeederEnergy

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int64]

# SimBench's low-voltage grids with enough households for a balance (rural1 has 13).
GRIDS = (
    "1-LV-rural2--0-sw",
    "1-LV-rural3--0-sw",
    "1-LV-semiurb4--0-sw",
    "1-LV-semiurb5--0-sw",
    "1-LV-urban6--0-sw",
)
STEPS_PER_DAY = 96
METER_OWN_W = 1.5  # a static meter's own consumption, drawn upstream of its register
VERSION = 4  # bump when what is generated changes: cached feeders are redrawn (4: cable lengths)


@dataclass(frozen=True)
class FeederOptions:
    """What to draw on a grid."""

    grid: str
    seed: int
    first_day: int  # day of the SimBench year (2016) the window starts on
    days: int
    pv_share: float = 0.0  # share of households with rooftop PV
    street_light_kw: float = 0.0  # unmetered lamps, on at night

    def key(self) -> str:
        """A file name for the cache."""
        return (
            f"{self.grid}_s{self.seed}_d{self.first_day}+{self.days}"
            f"_pv{self.pv_share:g}_sl{self.street_light_kw:g}_v{VERSION}"
        )


@dataclass(frozen=True)
class Network:
    """What the solver needs from a pandapower net, extracted once."""

    base_mva: float
    ybus: ComplexArray  # (buses, buses), pandapower's internal ordering
    slack: int
    v_slack: complex
    load_bus: IntArray  # internal bus of each SimBench load
    lv_buses: IntArray  # every bus but the slack (where lamps may hang)
    trafo_yt: ComplexArray  # row of Yt of the transformer: current into it at its LV end
    trafo_lv: int
    distance_ohm: FloatArray  # series resistance from the transformer to each load
    branch: list[str]  # the cable leaving the transformer each load hangs on
    shared_ohm: FloatArray  # (loads, loads) resistance of the path two loads share
    distance_m: FloatArray  # cable length from the transformer to each load


def load_grid(code: str) -> Any:
    """The SimBench net (pandapower), loaded from the CSVs the simbench package ships."""
    import simbench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simbench.get_simbench_net(code)


def _runpp(net: Any) -> None:
    import pandapower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "numba cannot be imported": it is not needed here
        pandapower.runpp(net, numba=False)


def network(net: Any) -> Network:
    """Admittance matrix and lookups from one `runpp` of the net as it is."""
    _runpp(net)
    internal = net._ppc["internal"]
    lookup = net._pd2ppc_lookups["bus"]
    ybus = np.asarray(internal["Ybus"].todense(), dtype=np.complex128)
    ref = int(internal["ref"][0])
    v_slack = complex(internal["V"][ref])
    start, _ = net._pd2ppc_lookups["branch"]["trafo"]
    trafo_yt = np.asarray(internal["Yt"][start].todense(), dtype=np.complex128).ravel()
    trafo_lv = int(lookup[int(net.trafo.lv_bus.iloc[0])])
    distance, branch, shared, metres = _topology(net)
    others = np.array([b for b in range(len(ybus)) if b != ref], dtype=np.int64)
    return Network(
        base_mva=float(net._ppc["baseMVA"]),
        ybus=ybus,
        slack=ref,
        v_slack=v_slack,
        load_bus=np.asarray(lookup[net.load.bus.to_numpy()], dtype=np.int64),
        lv_buses=others,
        trafo_yt=trafo_yt,
        trafo_lv=trafo_lv,
        distance_ohm=distance,
        branch=branch,
        shared_ohm=shared,
        distance_m=metres,
    )


def _topology(net: Any) -> tuple[FloatArray, list[str], FloatArray, FloatArray]:
    """Each load's cable resistance from the transformer, the first cable on its way, the
    resistance any two loads' paths share ((d_i + d_j − d_ij)/2 on a radial feeder), and
    each load's cable length in metres from the transformer (what a registry would know)."""
    import networkx as nx

    graph = nx.Graph()
    for idx, line in net.line.iterrows():
        r = float(line.r_ohm_per_km * line.length_km / max(int(line.parallel), 1))
        graph.add_edge(
            int(line.from_bus), int(line.to_bus), r=r, m=1000.0 * line.length_km, name=f"L{idx}"
        )
    root = int(net.trafo.lv_bus.iloc[0])
    dist: dict[int, float] = nx.single_source_dijkstra_path_length(graph, root, weight="r")
    paths: dict[int, list[int]] = nx.single_source_dijkstra_path(graph, root, weight="r")
    out_r, out_b, out_m = [], [], []
    for bus in net.load.bus.to_numpy().tolist():
        out_r.append(dist.get(int(bus), math.nan))
        path = paths.get(int(bus), [root])
        out_b.append(graph.edges[path[0], path[1]]["name"] if len(path) > 1 else "busbar")
        out_m.append(sum(graph.edges[a, b]["m"] for a, b in itertools.pairwise(path)))
    buses = [int(b) for b in net.load.bus.to_numpy().tolist()]
    between = {b: nx.single_source_dijkstra_path_length(graph, b, weight="r") for b in set(buses)}
    d = np.asarray(out_r)
    pair = np.array([[between[a].get(b, math.nan) for b in buses] for a in buses])
    shared = (d[:, None] + d[None, :] - pair) / 2
    return d, out_b, shared, np.asarray(out_m, dtype=np.float64)


def solve_voltages(
    nw: Network, s_mva: ComplexArray, tol: float = 1e-10
) -> tuple[FloatArray, int, FloatArray]:
    """Active power (MW) out of the transformer into the area for each row of bus loads,
    and every bus's voltage magnitude (T, buses) in per unit.

    `s_mva` (T, buses): complex power each bus consumes (negative real part: it feeds in).
    Z-bus iteration on the non-slack buses, vectorised over T; raises if it does not
    converge or the solution leaves a power mismatch above `tol` per unit.
    """
    o = nw.lv_buses
    y = nw.ybus
    z_oo = np.linalg.inv(y[np.ix_(o, o)])
    fixed = -z_oo @ (y[o, nw.slack] * nw.v_slack)  # (o,)
    s_inj = -(s_mva[:, o].T) / nw.base_mva  # (o, T) injections in per unit
    v: ComplexArray = np.full(s_inj.shape, nw.v_slack, dtype=np.complex128)
    iterations, step = 0, math.inf
    while step >= tol:
        iterations += 1
        if iterations > 200:
            raise RuntimeError("power flow did not converge")
        v_new = fixed[:, None] + z_oo @ np.conj(s_inj / v)
        step = float(np.max(np.abs(v_new - v)))
        v = v_new
    full = np.empty((len(y), v.shape[1]), dtype=np.complex128)
    full[o] = v
    full[nw.slack] = nw.v_slack
    mismatch = full[o] * np.conj(y[o] @ full) - s_inj
    worst = float(np.max(np.abs(mismatch)))
    if worst > 100 * tol:
        raise RuntimeError(f"power flow mismatch {worst:.2e} p.u.")
    s_into_trafo_lv = full[nw.trafo_lv] * np.conj(nw.trafo_yt @ full)
    out: FloatArray = -np.real(s_into_trafo_lv) * nw.base_mva
    magnitude: FloatArray = np.abs(full).T
    return out, iterations, magnitude


def solve(nw: Network, s_mva: ComplexArray, tol: float = 1e-10) -> tuple[FloatArray, int]:
    """`solve_voltages` without the voltages."""
    out, iterations, _ = solve_voltages(nw, s_mva, tol)
    return out, iterations


def check_against_pandapower(
    net: Any, nw: Network, p_mw: FloatArray, q_mvar: FloatArray, steps: list[int]
) -> float:
    """Largest |ours − runpp| (MW) of the power out of the transformer over `steps`.

    `p_mw`, `q_mvar` (T, loads) are the SimBench loads' powers; the net's other elements
    (its own PV units) are switched off, as `generate` does.
    """
    net.sgen["in_service"] = False
    s = np.zeros((len(steps), len(nw.ybus)), dtype=np.complex128)
    for k, step in enumerate(steps):
        np.add.at(s[k], nw.load_bus, p_mw[step] + 1j * q_mvar[step])
    ours, _ = solve(nw, s)
    worst = 0.0
    for k, step in enumerate(steps):
        net.load["p_mw"] = p_mw[step]
        net.load["q_mvar"] = q_mvar[step]
        _runpp(net)
        theirs = -float(net.res_trafo.p_lv_mw.iloc[0])
        worst = max(worst, abs(theirs - float(ours[k])))
    return worst


def household_powers(
    net: Any, rng: np.random.Generator, first_day: int, steps: int
) -> tuple[FloatArray, FloatArray]:
    """(P kW, Q kvar), each (steps, loads): every household its own noisy, shifted profile."""
    profiles = net.profiles["load"]
    n = len(net.load)
    year = len(profiles)
    day_offset = rng.integers(-3, 4, n) * STEPS_PER_DAY
    shift = rng.integers(-8, 9, n)  # ±2 h
    scale = rng.lognormal(-0.5 * 0.3**2, 0.3, n)
    noise_sd = rng.uniform(0.2, 0.4, n)
    start = first_day * STEPS_PER_DAY
    t = np.arange(steps)
    p = np.empty((steps, n))
    q = np.empty((steps, n))
    days = -(-steps // STEPS_PER_DAY)
    for i, (kind, rating_mw, q_mvar) in enumerate(
        zip(net.load.profile, net.load.p_mw, net.load.q_mvar, strict=True)
    ):
        idx = (start + day_offset[i] + shift[i] + t) % year
        base = profiles[f"{kind}_pload"].to_numpy()[idx] * float(rating_mw) * 1000.0
        day_factor = np.repeat(rng.lognormal(-0.5 * 0.15**2, 0.15, days), STEPS_PER_DAY)[:steps]
        sd = noise_sd[i]
        noise = rng.lognormal(-0.5 * sd**2, sd, steps)
        p[:, i] = base * scale[i] * day_factor * noise
        ratio = float(q_mvar) / float(rating_mw) if rating_mw else 0.0
        q[:, i] = p[:, i] * ratio
    return p, q


def _pv_powers(
    net: Any, rng: np.random.Generator, first_day: int, steps: int, share: float
) -> FloatArray:
    """PV output (kW, steps × loads): a share of households with rooftop PV of their own size."""
    n = len(net.load)
    out = np.zeros((steps, n))
    renewables = net.profiles["renewables"]
    names = [c for c in renewables.columns if str(c).startswith("PV")]
    if not names or share <= 0:
        return out
    start = first_day * STEPS_PER_DAY
    idx = (start + np.arange(steps)) % len(renewables)
    shape = renewables[names[0]].to_numpy()[idx]
    has_pv = rng.random(n) < share
    for i in np.flatnonzero(has_pv).tolist():
        kwp = rng.uniform(3.0, 10.0)
        tilt = rng.integers(-2, 3)  # orientation: the peak up to half an hour earlier or later
        own = np.roll(shape, int(tilt)) * rng.lognormal(-0.5 * 0.1**2, 0.1, steps)
        out[:, i] = kwp * own
    return out


def _night(net: Any, first_day: int, steps: int) -> FloatArray:
    """1 when it is dark (the grid's PV profile at zero), else 0."""
    renewables = net.profiles["renewables"]
    names = [c for c in renewables.columns if str(c).startswith("PV")]
    idx = (first_day * STEPS_PER_DAY + np.arange(steps)) % len(renewables)
    if not names:
        hour = (idx % STEPS_PER_DAY) / 4
        return ((hour < 6) | (hour >= 19)).astype(np.float64)
    dark: FloatArray = (renewables[names[0]].to_numpy()[idx] <= 1e-4).astype(np.float64)
    return dark


def generate(opts: FeederOptions, net: Any | None = None, start_ms: int = 0) -> FeederEnergy:
    """Draw and solve one district on a SimBench LV grid (see the module docstring)."""
    net = load_grid(opts.grid) if net is None else net
    rng = np.random.default_rng([opts.seed, opts.first_day, 11])
    steps = opts.days * STEPS_PER_DAY
    p_kw, q_kvar = household_powers(net, rng, opts.first_day, steps)
    pv_kw = _pv_powers(net, rng, opts.first_day, steps, opts.pv_share)
    lamps_kw = np.zeros((steps, len(net.load)))
    if opts.street_light_kw > 0:
        night = _night(net, opts.first_day, steps)
        at = rng.choice(len(net.load), size=min(5, len(net.load)), replace=False)
        lamps_kw[:, at] = night[:, None] * opts.street_light_kw / len(at)
    grid_short = opts.grid.split("-")[2]
    name = f"{grid_short[:2].upper()}{grid_short[-1]}{opts.seed % 100:02d}{opts.first_day:03d}"
    return feeder_energy(net, name, start_ms, p_kw, q_kvar, pv_kw, lamps_kw)


def feeder_energy(
    net: Any,
    name: str,
    start_ms: int,
    p_kw: FloatArray,
    q_kvar: FloatArray,
    pv_kw: FloatArray,
    lamps_kw: FloatArray,
) -> FeederEnergy:
    """Solve the net for 15-minute household powers (steps × loads) and meter it.

    Each household's meter registers its load net of its PV; its own consumption
    (`METER_OWN_W`) and the unmetered lamps `lamps_kw` (at the same buses) load the
    cables but no register. The net's own PV units (SimBench sgens) are switched off.
    """
    net.sgen["in_service"] = False
    nw = network(net)
    steps = p_kw.shape[0]
    net_kw = p_kw - pv_kw
    s = np.zeros((steps, len(nw.ybus)), dtype=np.complex128)
    for i, bus in enumerate(nw.load_bus.tolist()):
        unmetered = METER_OWN_W / 1000 + lamps_kw[:, i]
        s[:, bus] += (net_kw[:, i] + unmetered + 1j * q_kvar[:, i]) / 1000
    master_mw, iterations, vm = solve_voltages(nw, s)
    hours = 0.25
    # What the meters' voltage registers see (phase voltage of the 0.4 kV grid): the
    # households at their buses, the master at the transformer's LV busbar.
    phase_v = 400.0 / math.sqrt(3.0)
    volts = np.column_stack([vm[:, nw.load_bus], vm[:, nw.trafo_lv]]) * phase_v
    return FeederEnergy(
        name=name,
        start_ms=start_ms,
        interval_s=900,
        households=[f"{i:03d}" for i in range(len(net.load))],
        imports_kwh=np.maximum(net_kw, 0.0) * hours,
        exports_kwh=np.maximum(-net_kw, 0.0) * hours,
        master_kwh=master_mw * 1000.0 * hours,
        distance_ohm=nw.distance_ohm,
        branch=nw.branch,
        shared_ohm=nw.shared_ohm,
        distance_m=nw.distance_m,
        volts=volts,
        facts={
            "iterations": float(iterations),
            "meter_own_kw": METER_OWN_W / 1000 * len(net.load),
            "street_light_mean_kw": float(lamps_kw.sum(axis=1).mean()),
            "prosumers": float((pv_kw.max(axis=0) > 0).sum()) if steps else 0.0,
        },
    )


def radial_feeder(branches: int, per_branch: int, span_m: float = 30.0) -> Any:
    """A small pandapower feeder: a 250 kVA 20/0.4 kV transformer, `branches` NAYY 4x150
    cables with `per_branch` households each, one every `span_m` metres (for tests)."""
    import pandapower as pp

    net = pp.create_empty_network()
    mv = pp.create_bus(net, vn_kv=20.0)
    pp.create_ext_grid(net, mv, vm_pu=1.02)
    lv = pp.create_bus(net, vn_kv=0.4)
    pp.create_transformer(net, mv, lv, std_type="0.25 MVA 20/0.4 kV")
    for _ in range(branches):
        prev = lv
        for _ in range(per_branch):
            bus = pp.create_bus(net, vn_kv=0.4)
            pp.create_line(net, prev, bus, span_m / 1000, std_type="NAYY 4x150 SE")
            pp.create_load(net, bus, p_mw=0.0, q_mvar=0.0)
            prev = bus
    return net


def is_cached(opts: FeederOptions, cache: Path) -> bool:
    """Whether `cached` would read this feeder from `cache`."""
    return (cache / f"{opts.key()}.npz").exists()


def cached(
    opts: FeederOptions, cache: Path, start_ms: int = 0, net: Any | None = None
) -> FeederEnergy:
    """`generate`, kept as .npz under `cache` (grids load slowly: simbench reads CSVs)."""
    path = cache / f"{opts.key()}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return FeederEnergy(
                name=str(z["name"]),
                start_ms=start_ms,
                interval_s=int(z["interval_s"]),
                households=[str(h) for h in z["households"]],
                imports_kwh=z["imports_kwh"],
                exports_kwh=z["exports_kwh"],
                master_kwh=z["master_kwh"],
                distance_ohm=z["distance_ohm"],
                branch=[str(b) for b in z["branch"]],
                shared_ohm=z["shared_ohm"],
                distance_m=z["distance_m"],
                volts=z["volts"] if z["volts"].size else None,
                facts=dict(zip(z["fact_names"].tolist(), z["fact_values"].tolist(), strict=True)),
            )
    energy = generate(opts, net, start_ms=start_ms)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # runs may race: own file
    np.savez_compressed(
        tmp,
        name=energy.name,
        interval_s=energy.interval_s,
        households=np.array(energy.households),
        imports_kwh=energy.imports_kwh,
        exports_kwh=energy.exports_kwh,
        master_kwh=energy.master_kwh,
        distance_ohm=energy.distance_ohm,
        branch=np.array(energy.branch),
        shared_ohm=energy.shared_ohm if energy.shared_ohm is not None else np.zeros((0, 0)),
        distance_m=energy.distance_m if energy.distance_m is not None else np.zeros(0),
        volts=energy.volts if energy.volts is not None else np.zeros((0, 0)),
        fact_names=np.array(list(energy.facts)),
        fact_values=np.array(list(energy.facts.values()), dtype=np.float64),
    )
    tmp.replace(path)
    return energy
