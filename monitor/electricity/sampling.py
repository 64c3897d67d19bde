"""Sampling plans for lots in doubt: which meters to test, and what the result means.

A lot whose evidence is insufficient or borderline is resampled (docs/metrology.md,
"Lots: extend, sample, replace"): a random sample is drawn, every sampled meter is
verified against its MPE, and the count of nonconforming meters accepts the lot
(extend) or rejects it (replace).

Two kinds of plan: ISO 2859-1 (indexed by the acceptance quality limit, AQL, for a
continuing series of lots) and ISO 2859-2 procedure A (indexed by the limiting
quality, LQ, for isolated lots, as China's in-service schemes sample). The operating
characteristic (`acceptance_probability`, `operating_characteristic`) says how likely
a plan is to accept a lot of a given nonconforming share.

Everything here is a pure function of its arguments, so a decision can be replayed
from what was recorded: the plan (kind, lot size, AQL or LQ), the seed and the meter ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "AQLS",
    "LQS",
    "PLAN_KINDS",
    "Plan",
    "Verdict",
    "acceptance_probability",
    "code_letter",
    "draw_sample",
    "iso2859_1_plan",
    "iso2859_2_plan",
    "judge",
    "operating_characteristic",
    "plan",
]

ISO2859_1 = "iso2859-1"
_ISO2859_1_SOURCE = (
    "ISO 2859-1 (GB/T 2828.1) Tables I and II-A: general inspection level II, "
    "normal inspection, single sampling"
)

# ISO 2859-1 Table I, general inspection level II: (largest lot size, code letter).
# The last range is open-ended, hence None. Lots of one are below the table.
_CODE_LETTERS: tuple[tuple[int | None, str], ...] = (
    (8, "A"),
    (15, "B"),
    (25, "C"),
    (50, "D"),
    (90, "E"),
    (150, "F"),
    (280, "G"),
    (500, "H"),
    (1_200, "J"),
    (3_200, "K"),
    (10_000, "L"),
    (35_000, "M"),
    (150_000, "N"),
    (500_000, "P"),
    (None, "Q"),
)

# ISO 2859-1 Table II-A: the sample size that belongs to each code letter.
_SAMPLE_SIZES: dict[str, int] = {
    "A": 2,
    "B": 3,
    "C": 5,
    "D": 8,
    "E": 13,
    "F": 20,
    "G": 32,
    "H": 50,
    "J": 80,
    "K": 125,
    "L": 200,
    "M": 315,
    "N": 500,
    "P": 800,
    "Q": 1250,
}

# ISO 2859-1 Table II-A (normal inspection, single sampling), the AQL columns the
# rules file may choose. A cell is either
#   Ac            -- the letter's own sample size, acceptance number Ac, or
#   (n, Ac)       -- an arrow in the standard, already followed to the plan it
#                    points at: sample size n, acceptance number Ac.
# Re is always Ac + 1. Several public AQL tables are off by a row; this one is
# written out in docs/metrology.md and checked cell by cell in tests/test_sampling.py, so
# read it against that table (or the standard) line by line, not against a web page.
_ISO2859_1_TABLE: dict[str, dict[float, int | tuple[int, int]]] = {
    #      AQL 0.65      AQL 1.0       AQL 1.5       AQL 2.5
    "A": {0.65: (20, 0), 1.0: (13, 0), 1.5: (8, 0), 2.5: (5, 0)},
    "B": {0.65: (20, 0), 1.0: (13, 0), 1.5: (8, 0), 2.5: (5, 0)},
    "C": {0.65: (20, 0), 1.0: (13, 0), 1.5: (8, 0), 2.5: 0},
    "D": {0.65: (20, 0), 1.0: (13, 0), 1.5: 0, 2.5: (5, 0)},
    "E": {0.65: (20, 0), 1.0: 0, 1.5: (8, 0), 2.5: (20, 1)},
    "F": {0.65: 0, 1.0: (13, 0), 1.5: (32, 1), 2.5: 1},
    "G": {0.65: (20, 0), 1.0: (50, 1), 1.5: 1, 2.5: 2},
    "H": {0.65: (80, 1), 1.0: 1, 1.5: 2, 2.5: 3},
    "J": {0.65: 1, 1.0: 2, 1.5: 3, 2.5: 5},
    "K": {0.65: 2, 1.0: 3, 1.5: 5, 2.5: 7},
    "L": {0.65: 3, 1.0: 5, 1.5: 7, 2.5: 10},
    "M": {0.65: 5, 1.0: 7, 1.5: 10, 2.5: 14},
    "N": {0.65: 7, 1.0: 10, 1.5: 14, 2.5: 21},
    "P": {0.65: 10, 1.0: 14, 1.5: 21, 2.5: (500, 21)},
    "Q": {0.65: 14, 1.0: 21, 1.5: (800, 21), 2.5: (500, 21)},
}

AQLS: tuple[float, ...] = (0.65, 1.0, 1.5, 2.5)
"""The AQL columns (percent nonconforming) that `iso2859_1_plan` knows."""

Verdict = Literal["accept", "reject", "incomplete"]


@dataclass(frozen=True)
class Plan:
    """A resolved single-sampling plan for one lot.

    `sample_size` meters are verified; the lot is accepted with at most `accept`
    nonconforming meters and rejected with `reject` or more. `inspect_all` is set
    when the plan's sample would be the whole lot (or more), in which case
    `sample_size` is the lot size. An ISO 2859-1 plan has an `aql` and a
    `code_letter`; an ISO 2859-2 plan has an `lq` and no code letter (its table is
    indexed by lot size). `source` says where the numbers come from, in words, so a
    recorded decision explains itself.

    >>> p = plan("iso2859-2", 1000, 5.0)
    >>> (p.sample_size, p.accept, p.reject, p.name)
    (80, 1, 2, 'ISO 2859-2 procedure A, LQ 5 %')
    """

    kind: str
    lot_size: int
    code_letter: str
    aql: float | None
    sample_size: int
    accept: int
    reject: int
    inspect_all: bool
    source: str
    lq: float | None = None

    @property
    def name(self) -> str:
        """The plan's name as a regulator reads it: standard and quality level."""
        if self.lq is not None:
            return f"ISO 2859-2 procedure A, LQ {self.lq:g} %"
        return f"ISO 2859-1 level II normal, AQL {self.aql:g} %"

    def as_dict(self) -> dict[str, str | int | float | bool | None]:
        """The plan as a flat, JSON-ready mapping, for recording with the decision."""
        return {**dataclasses.asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Plan:
        """A recorded plan back (plans recorded before `lq` existed included)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in fields})


def code_letter(lot_size: int) -> str:
    """ISO 2859-1 sample size code letter, general inspection level II.

    Raises ValueError for lots smaller than 2: Table I starts at 2, and a lot of
    one meter is simply inspected whole (see `plan`).
    """
    if lot_size < 2:
        raise ValueError(f"lot size {lot_size} is below ISO 2859-1 Table I (starts at 2)")
    for upper, letter in _CODE_LETTERS:
        if upper is None or lot_size <= upper:
            return letter
    raise AssertionError("unreachable: the last code-letter range is open-ended")


def _aql_column(aql: float) -> float:
    """The table column for `aql`, or ValueError naming the columns there are."""
    # Exact match on purpose: the rules schema admits exactly these values, and a
    # near miss such as 0.6 or 4.0 is a configuration error, not a rounding issue.
    if aql not in AQLS:
        allowed = ", ".join(str(a) for a in AQLS)
        raise ValueError(f"AQL {aql} has no column in the ISO 2859-1 table; use one of {allowed}")
    return aql


def _resolve_cell(letter: str, aql: float) -> tuple[int, int, str]:
    """(sample size, Ac, how it was found) for one table cell, following any arrow."""
    cell = _ISO2859_1_TABLE[letter][_aql_column(aql)]
    if isinstance(cell, tuple):
        n, ac = cell
        return n, ac, f"code letter {letter}, AQL {aql}: arrow to n={n}, Ac {ac}"
    n = _SAMPLE_SIZES[letter]
    return n, cell, f"code letter {letter}, AQL {aql}: n={n}, Ac {cell}"


def iso2859_1_plan(lot_size: int, aql: float) -> Plan:
    """ISO 2859-1 single sampling plan, normal inspection, general level II.

    When the plan's sample size reaches the lot size every meter is inspected:
    `sample_size` becomes the lot size and the plan's Ac/Re still decide.
    Raises ValueError for lots smaller than 2 and for an AQL outside `AQLS`.
    """
    _aql_column(aql)  # before code_letter, so a bad AQL is reported whatever the lot
    letter = code_letter(lot_size)
    n, ac, how = _resolve_cell(letter, aql)
    inspect_all = n >= lot_size
    if inspect_all:
        how += f"; n ≥ lot size {lot_size}: every meter inspected"
    return Plan(
        kind=ISO2859_1,
        lot_size=lot_size,
        code_letter=letter,
        aql=aql,
        sample_size=lot_size if inspect_all else n,
        accept=ac,
        reject=ac + 1,
        inspect_all=inspect_all,
        source=f"{_ISO2859_1_SOURCE}; {how}",
    )


ISO2859_2 = "iso2859-2"
_ISO2859_2_SOURCE = (
    "ISO 2859-2 procedure A (isolated lots, limiting quality), Table A, single sampling"
)

LQS: tuple[float, ...] = (2.0, 3.15, 5.0, 8.0, 12.5, 20.0, 31.5)
"""The limiting-quality columns (percent nonconforming) that `iso2859_2_plan` knows."""

# ISO 2859-2 procedure A, Table A: (largest lot size of the row, one (n, Ac) per LQ
# column of `LQS`); Re is Ac + 1 and n ≥ lot size means every meter is inspected. The
# last row is open-ended, hence None; the table starts at lots of 16.
# Transcribed from one public rendering of the standard's table; the LQ 12.5 % and 20 %
# columns from lot size 281 up agree with a second one. Every cell of the rows from 281
# up accepts a lot at its LQ with a binomial probability of at most 0.13, as the
# standard's design states; tests/test_sampling.py checks that for every such cell,
# which catches a mistyped n or Ac. docs/metrology.md prints the same table.
_ISO2859_2_TABLE: tuple[tuple[int | None, tuple[tuple[int, int], ...]], ...] = (
    #        LQ 2.0     3.15      5.0       8.0       12.5      20        31.5
    (25, ((50, 0), (50, 0), (28, 0), (17, 0), (13, 0), (9, 0), (6, 0))),
    (50, ((50, 0), (50, 0), (28, 0), (22, 0), (15, 0), (10, 0), (6, 0))),
    (90, ((50, 0), (44, 0), (34, 0), (24, 0), (16, 0), (10, 0), (8, 0))),
    (150, ((80, 0), (55, 0), (38, 0), (26, 0), (18, 0), (13, 0), (13, 1))),
    (280, ((95, 0), (65, 0), (42, 0), (28, 0), (20, 0), (20, 1), (13, 1))),
    (500, ((105, 0), (80, 0), (50, 0), (32, 0), (32, 1), (20, 1), (20, 3))),
    (1_200, ((125, 0), (125, 1), (80, 1), (50, 1), (32, 1), (32, 3), (32, 5))),
    (3_200, ((200, 1), (125, 1), (125, 3), (80, 3), (50, 3), (50, 5), (50, 10))),
    (10_000, ((200, 1), (200, 3), (200, 5), (125, 5), (80, 5), (80, 10), (80, 18))),
    (35_000, ((315, 3), (315, 5), (315, 10), (200, 10), (125, 10), (125, 18), (80, 18))),
    (150_000, ((500, 5), (500, 10), (500, 18), (315, 18), (200, 18), (125, 18), (80, 18))),
    (500_000, ((800, 10), (800, 18), (500, 18), (315, 18), (200, 18), (125, 18), (80, 18))),
    (None, ((1250, 18), (800, 18), (500, 18), (315, 18), (200, 18), (125, 18), (80, 18))),
)
_ISO2859_2_FIRST_LOT = 16


def _lq_column(lq: float) -> int:
    """The table column of `lq`, or ValueError naming the columns there are."""
    if lq not in LQS:  # exact, as for the AQL: a near miss is a configuration error
        allowed = ", ".join(f"{v:g}" for v in LQS)
        raise ValueError(f"LQ {lq} has no column in the ISO 2859-2 table; use one of {allowed}")
    return LQS.index(lq)


def _lq_row(lot_size: int) -> tuple[int, int | None, tuple[tuple[int, int], ...]]:
    """(smallest lot, largest lot, cells) of the row a lot falls in."""
    smallest = _ISO2859_2_FIRST_LOT
    for upper, cells in _ISO2859_2_TABLE:
        if upper is None or lot_size <= upper:
            return smallest, upper, cells
        smallest = upper + 1
    raise AssertionError("unreachable: the last lot-size row is open-ended")


def _lot_range(smallest: int, largest: int | None) -> str:
    return f"lots {smallest}–{largest}" if largest is not None else f"lots > {smallest - 1}"


def iso2859_2_plan(lot_size: int, lq: float) -> Plan:
    """ISO 2859-2 procedure A single sampling plan for an isolated lot at limiting quality `lq`.

    Lots below the table's first row (16 meters) take that row's plan, so a lot
    smaller than its sample is inspected whole. Raises ValueError for lots smaller
    than 1 and for an LQ outside `LQS`.
    """
    column = _lq_column(lq)
    if lot_size < 1:
        raise ValueError(f"lot size must be at least 1, got {lot_size}")
    smallest, largest, cells = _lq_row(lot_size)
    n, ac = cells[column]
    how = f"{_lot_range(smallest, largest)}, LQ {lq:g} %: n={n}, Ac {ac}"
    if lot_size < _ISO2859_2_FIRST_LOT:
        how = f"lot of {lot_size}, below the table (starts at 16): the first row's {how}"
    inspect_all = n >= lot_size
    if inspect_all:
        how += f"; n ≥ lot size {lot_size}: every meter inspected"
    return Plan(
        kind=ISO2859_2,
        lot_size=lot_size,
        code_letter="",
        aql=None,
        sample_size=lot_size if inspect_all else n,
        accept=ac,
        reject=ac + 1,
        inspect_all=inspect_all,
        source=f"{_ISO2859_2_SOURCE}; {how}",
        lq=lq,
    )


def _whole_lot_plan(aql: float) -> Plan:
    """ISO 2859-1 plan for a lot of one meter: inspect it.

    Built from the smallest lot the standard covers (2, letter A) so the AQL check
    and acceptance numbers apply, exactly as for any lot smaller than its plan's
    sample; there is no code letter for a lot of one, hence "".
    """
    base = iso2859_1_plan(2, aql)
    return dataclasses.replace(
        base,
        lot_size=1,
        code_letter="",
        sample_size=1,
        inspect_all=True,
        source=f"lot of one meter: inspected whole, with the acceptance numbers of the "
        f"plan for the smallest lot ({base.source})",
    )


def _iso2859_1_any_lot(lot_size: int, aql: float) -> Plan:
    """`iso2859_1_plan`, with a lot of one inspected whole."""
    if lot_size == 1:
        return _whole_lot_plan(aql)
    return iso2859_1_plan(lot_size, aql)


# Plan kinds a rules file may name: the builder takes the lot size and the quality
# level the kind is indexed by (AQL or LQ, percent). None marks a kind that is known
# (docs/metrology.md lists it as a scheme in use) but not built: ISO 3951-1's
# s-method tables are not transcribed from a source the project can name yet.
PLAN_KINDS: Mapping[str, Callable[[int, float], Plan] | None] = {
    ISO2859_1: _iso2859_1_any_lot,
    ISO2859_2: iso2859_2_plan,
    "iso3951-1": None,  # variables sampling, s-method (UK in-service testing)
}


def _builder(kind: str) -> Callable[[int, float], Plan]:
    """The plan builder for `kind`, or NotImplementedError saying what exists."""
    builder = PLAN_KINDS.get(kind)
    if builder is not None:
        return builder
    built = ", ".join(k for k, b in PLAN_KINDS.items() if b is not None)
    if kind in PLAN_KINDS:
        raise NotImplementedError(
            f"sampling plan kind {kind!r} is not implemented yet; use {built}"
        )
    raise NotImplementedError(f"unknown sampling plan kind {kind!r}; implemented: {built}")


def plan(kind: str, lot_size: int, quality_pct: float) -> Plan:
    """The sampling plan of `kind` for a lot of `lot_size` meters.

    `quality_pct` is the AQL for "iso2859-1" and the LQ for "iso2859-2"; other
    kinds raise NotImplementedError. Raises ValueError for lot sizes below 1 and
    for a quality level the kind's table has no column for.
    """
    builder = _builder(kind)
    if lot_size < 1:
        raise ValueError(f"lot size must be at least 1, got {lot_size}")
    return builder(lot_size, quality_pct)


# --- operating characteristic ---------------------------------------------------------

# Below this sample fraction the binomial is the operating characteristic (drawing
# without replacement hardly matters); above it the hypergeometric of the finite lot.
# 10 % is the usual bound for the binomial approximation to the hypergeometric.
BINOMIAL_MAX_SAMPLE_FRACTION = 0.1

OcModel = Literal["binomial", "hypergeometric"]


def binomial_pa(n: int, accept: int, share: float) -> float:
    """P(at most `accept` nonconforming in `n` draws), each nonconforming with `share`."""
    return min(1.0, sum(_binomial_term(n, k, share) for k in range(min(accept, n) + 1)))


def _binomial_term(n: int, k: int, p: float) -> float:
    if p <= 0.0:
        return 1.0 if k == 0 else 0.0
    if p >= 1.0:
        return 1.0 if k == n else 0.0
    return math.exp(_log_comb(n, k) + k * math.log(p) + (n - k) * math.log1p(-p))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeometric_pa(lot_size: int, n: int, accept: int, nonconforming: int) -> float:
    """P(at most `accept` nonconforming in a sample of `n` from a lot holding `nonconforming`)."""
    n = min(n, lot_size)
    total = _log_comb(lot_size, n)
    pa = 0.0
    for k in range(min(accept, n, nonconforming) + 1):
        if n - k > lot_size - nonconforming:
            continue  # the sample cannot hold that few nonconforming meters
        pa += math.exp(
            _log_comb(nonconforming, k) + _log_comb(lot_size - nonconforming, n - k) - total
        )
    return min(1.0, pa)


def acceptance_probability(p: Plan, share: float) -> tuple[float, OcModel]:
    """Probability that `p` accepts a lot whose nonconforming share is `share` (0–1).

    Binomial when the sample is at most a tenth of the lot, else hypergeometric over
    the lot. A share of a finite lot is a whole number of meters only sometimes:
    between two whole numbers D and D + 1 the probability is interpolated linearly,
    so the curve stays continuous and monotone in `share`.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"nonconforming share must be within 0 and 1, got {share}")
    if p.sample_size <= BINOMIAL_MAX_SAMPLE_FRACTION * p.lot_size:
        return binomial_pa(p.sample_size, p.accept, share), "binomial"
    expected = share * p.lot_size
    low = math.floor(expected)
    pa_low = hypergeometric_pa(p.lot_size, p.sample_size, p.accept, low)
    if low == expected:
        return pa_low, "hypergeometric"
    pa_high = hypergeometric_pa(p.lot_size, p.sample_size, p.accept, low + 1)
    frac = expected - low
    return (1 - frac) * pa_low + frac * pa_high, "hypergeometric"


def operating_characteristic(p: Plan, estimated_share: float | None) -> dict[str, Any]:
    """The plan's probability of acceptance at its quality level and at the lot's estimate.

    For an LQ plan, `pa_at_lq` is the consumer's risk: how likely a lot as bad as the
    LQ is still accepted. For an AQL plan, `pa_at_aql` is one minus the producer's
    risk. `estimated_share` is the lot's current estimated nonconforming share (None:
    not estimable, and then no probability is given for it).
    """
    level = p.lq if p.lq is not None else p.aql
    assert level is not None, "a plan is indexed by an AQL or an LQ"
    pa_level, model = acceptance_probability(p, level / 100)
    pa_estimate = None
    if estimated_share is not None:
        pa_estimate = round(acceptance_probability(p, estimated_share)[0], 4)
    return {
        "model": model,
        "pa_at_lq" if p.lq is not None else "pa_at_aql": round(pa_level, 4),
        "estimated_nonconforming_pct": None
        if estimated_share is None
        else round(100 * estimated_share, 3),
        "pa_at_estimate": pa_estimate,
    }


def _rng(seed: str) -> np.random.Generator:
    """A numpy Generator seeded from a stable digest of `seed`.

    hashlib, not hash(): Python salts str hashes per process (PYTHONHASHSEED), and
    the draw must be replayable from the recorded seed anywhere.
    """
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def draw_sample(meter_ids: Sequence[str], n: int, seed: str) -> list[str]:
    """Draw `n` distinct meter ids at random, reproducibly from `seed`; sorted.

    The ids are de-duplicated and sorted before drawing, so the result depends only
    on the set of ids, `n` and `seed`, not on the order the ids arrived in. With
    `n` at least the number of ids, every id is returned. The draw is stable across
    processes and platforms; numpy may change Generator streams between major
    versions (NEP 19), so record the numpy version with the seed.
    """
    if n < 0:
        raise ValueError(f"sample size must not be negative, got {n}")
    population = sorted(set(meter_ids))
    if n >= len(population):
        return population
    picked = _rng(seed).choice(len(population), size=n, replace=False)
    return sorted(population[int(i)] for i in picked)


def judge(plan: Plan, nonconforming: int, inspected: int) -> Verdict:
    """Verdict on a sample so far: "accept", "reject" or "incomplete".

    Reject as soon as `nonconforming` reaches Re, even before the sample is
    complete: more conforming meters cannot undo it. Accept only once the whole
    sample is inspected with at most Ac nonconforming. Otherwise incomplete.
    """
    if nonconforming < 0 or inspected < 0:
        raise ValueError(f"counts must not be negative: {nonconforming=}, {inspected=}")
    if nonconforming > inspected:
        raise ValueError(f"{nonconforming} nonconforming out of only {inspected} inspected")
    if nonconforming >= plan.reject:
        return "reject"
    if inspected >= plan.sample_size and nonconforming <= plan.accept:
        return "accept"
    return "incomplete"
