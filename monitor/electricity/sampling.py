"""Sampling plans for lots in doubt: which meters to test, and what the result means.

A lot whose evidence is insufficient or borderline is resampled (docs/metrology.md,
"Lots: extend, sample, replace"): a random sample is drawn, every sampled meter is
verified against its MPE, and the count of nonconforming meters accepts the lot
(extend) or rejects it (replace).

Everything here is a pure function of its arguments, so a decision can be replayed
from what was recorded: the plan (kind, lot size, AQL), the seed and the meter ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "AQLS",
    "PLAN_KINDS",
    "Plan",
    "Verdict",
    "code_letter",
    "draw_sample",
    "iso2859_1_plan",
    "judge",
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
    `sample_size` is the lot size. `source` says where the numbers come from, in
    words, so a recorded decision explains itself.
    """

    kind: str
    lot_size: int
    code_letter: str
    aql: float
    sample_size: int
    accept: int
    reject: int
    inspect_all: bool
    source: str

    def as_dict(self) -> dict[str, str | int | float | bool]:
        """The plan as a flat, JSON-ready mapping, for recording with the decision."""
        return dataclasses.asdict(self)


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


# Plan kinds a rules file may name. None marks a kind that is known (docs/metrology.md
# lists it as a scheme in use) but not built yet; adding one is a builder here.
PLAN_KINDS: Mapping[str, Callable[[int, float], Plan] | None] = {
    ISO2859_1: iso2859_1_plan,
    "iso2859-2": None,  # limiting quality (LQ) plans for isolated lots, GB/T 2828.2
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


def _whole_lot_plan(builder: Callable[[int, float], Plan], aql: float) -> Plan:
    """Plan for a lot of one meter: inspect it.

    Built from the smallest lot the standard covers (2, letter A) so the kind's own
    AQL check and acceptance numbers apply, exactly as for any lot smaller than
    its plan's sample; there is no code letter for a lot of one, hence "".
    """
    base = builder(2, aql)
    return dataclasses.replace(
        base,
        lot_size=1,
        code_letter="",
        sample_size=1,
        inspect_all=True,
        source=f"lot of one meter: inspected whole, with the acceptance numbers of the "
        f"plan for the smallest lot ({base.source})",
    )


def plan(kind: str, lot_size: int, aql: float) -> Plan:
    """The sampling plan of `kind` for a lot of `lot_size` meters at `aql` percent.

    Only "iso2859-1" is built; other kinds raise NotImplementedError. Raises
    ValueError for lot sizes below 1 and for an AQL the kind does not know.
    """
    builder = _builder(kind)
    if lot_size < 1:
        raise ValueError(f"lot size must be at least 1, got {lot_size}")
    if lot_size == 1:
        return _whole_lot_plan(builder, aql)
    return builder(lot_size, aql)


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
