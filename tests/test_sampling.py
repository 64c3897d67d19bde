"""ISO 2859-1 sampling: code letters, every cell of the docs/metrology.md table, draws, verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.electricity import sampling
from monitor.electricity.sampling import Plan, code_letter, draw_sample, iso2859_1_plan, judge, plan

REPO = Path(__file__).resolve().parent.parent

# Code-letter ranges from docs/metrology.md: letter -> (smallest lot, largest lot). Q is
# open-ended; 10 000 000 stands in for "any large lot".
RANGES: dict[str, tuple[int, int]] = {
    "A": (2, 8),
    "B": (9, 15),
    "C": (16, 25),
    "D": (26, 50),
    "E": (51, 90),
    "F": (91, 150),
    "G": (151, 280),
    "H": (281, 500),
    "J": (501, 1_200),
    "K": (1_201, 3_200),
    "L": (3_201, 10_000),
    "M": (10_001, 35_000),
    "N": (35_001, 150_000),
    "P": (150_001, 500_000),
    "Q": (500_001, 10_000_000),
}

AQL_COLUMNS = (0.65, 1.0, 1.5, 2.5)

# The docs/metrology.md table, every cell written out as (n, Ac), own-letter cells included
# (A 2, B 3, C 5, D 8, E 13, F 20, G 32, H 50, J 80, K 125, L 200, M 315, N 500,
# P 800, Q 1250). Columns: AQL 0.65, 1.0, 1.5, 2.5.
TABLE: dict[str, tuple[tuple[int, int], ...]] = {
    "A": ((20, 0), (13, 0), (8, 0), (5, 0)),
    "B": ((20, 0), (13, 0), (8, 0), (5, 0)),
    "C": ((20, 0), (13, 0), (8, 0), (5, 0)),
    "D": ((20, 0), (13, 0), (8, 0), (5, 0)),
    "E": ((20, 0), (13, 0), (8, 0), (20, 1)),
    "F": ((20, 0), (13, 0), (32, 1), (20, 1)),
    "G": ((20, 0), (50, 1), (32, 1), (32, 2)),
    "H": ((80, 1), (50, 1), (50, 2), (50, 3)),
    "J": ((80, 1), (80, 2), (80, 3), (80, 5)),
    "K": ((125, 2), (125, 3), (125, 5), (125, 7)),
    "L": ((200, 3), (200, 5), (200, 7), (200, 10)),
    "M": ((315, 5), (315, 7), (315, 10), (315, 14)),
    "N": ((500, 7), (500, 10), (500, 14), (500, 21)),
    "P": ((800, 10), (800, 14), (800, 21), (500, 21)),
    "Q": ((1250, 14), (1250, 21), (800, 21), (500, 21)),
}

CELLS = [
    pytest.param(letter, lot, aql, n, ac, id=f"{letter}-lot{lot}-aql{aql}")
    for letter, cells in TABLE.items()
    for aql, (n, ac) in zip(AQL_COLUMNS, cells, strict=True)
    for lot in RANGES[letter]
]


@pytest.mark.parametrize(("letter", "lot_size", "aql", "n", "ac"), CELLS)
def test_every_table_cell_at_both_ends_of_its_range(
    letter: str, lot_size: int, aql: float, n: int, ac: int
) -> None:
    p = iso2859_1_plan(lot_size, aql)
    assert p.code_letter == letter
    assert (p.accept, p.reject) == (ac, ac + 1)
    # A plan whose sample is the lot or more inspects the lot, keeping Ac/Re.
    assert p.inspect_all is (n >= lot_size)
    assert p.sample_size == min(n, lot_size)
    assert (p.kind, p.lot_size, p.aql) == ("iso2859-1", lot_size, aql)
    assert f"code letter {letter}" in p.source


def test_the_test_table_covers_every_letter_and_column() -> None:
    assert len(CELLS) == 15 * 4 * 2
    assert list(TABLE) == list(RANGES)
    assert sampling.AQLS == AQL_COLUMNS


BOUNDARIES = [
    (8, "A", 9, "B"),
    (15, "B", 16, "C"),
    (25, "C", 26, "D"),
    (50, "D", 51, "E"),
    (90, "E", 91, "F"),
    (150, "F", 151, "G"),
    (280, "G", 281, "H"),
    (500, "H", 501, "J"),
    (1_200, "J", 1_201, "K"),
    (3_200, "K", 3_201, "L"),
    (10_000, "L", 10_001, "M"),
    (35_000, "M", 35_001, "N"),
    (150_000, "N", 150_001, "P"),
    (500_000, "P", 500_001, "Q"),
]


@pytest.mark.parametrize(("last", "below", "first", "above"), BOUNDARIES)
def test_code_letter_boundaries(last: int, below: str, first: int, above: str) -> None:
    assert code_letter(last) == below
    assert code_letter(first) == above


def test_code_letter_ends() -> None:
    assert code_letter(2) == "A"
    assert code_letter(10**9) == "Q"


@pytest.mark.parametrize("lot_size", [1, 0, -5])
def test_code_letter_refuses_lots_below_two(lot_size: int) -> None:
    with pytest.raises(ValueError, match="Table I"):
        code_letter(lot_size)


def test_lot_smaller_than_the_arrowed_sample_is_inspected_whole() -> None:
    # Lot 5 is letter A; at AQL 0.65 the arrow sends it to n=20, and 20 ≥ 5.
    p = iso2859_1_plan(5, 0.65)
    assert (p.code_letter, p.sample_size, p.inspect_all) == ("A", 5, True)
    assert (p.accept, p.reject) == (0, 1)
    assert "every meter inspected" in p.source


def test_sample_equal_to_lot_is_inspect_all_and_one_more_is_not() -> None:
    # Lot 20 and 21 are letter C; at AQL 0.65 the arrow sends both to n=20.
    assert iso2859_1_plan(20, 0.65).inspect_all
    p = iso2859_1_plan(21, 0.65)
    assert (p.sample_size, p.inspect_all) == (20, False)


@pytest.mark.parametrize("aql", [0.4, 4.0, 0.0, -1.0, float("nan")])
def test_unknown_aql_names_the_allowed_ones(aql: float) -> None:
    with pytest.raises(ValueError, match=r"0\.65, 1\.0, 1\.5, 2\.5"):
        iso2859_1_plan(100, aql)
    with pytest.raises(ValueError, match=r"0\.65, 1\.0, 1\.5, 2\.5"):
        plan("iso2859-1", 1, aql)


def test_plan_dispatches_to_iso2859_1() -> None:
    assert plan("iso2859-1", 1000, 1.0) == iso2859_1_plan(1000, 1.0)


def test_plan_for_a_lot_of_one_inspects_it() -> None:
    p = plan("iso2859-1", 1, 2.5)
    assert (p.lot_size, p.sample_size, p.inspect_all) == (1, 1, True)
    assert (p.accept, p.reject, p.code_letter) == (0, 1, "")
    assert judge(p, 0, 1) == "accept"
    assert judge(p, 1, 1) == "reject"


@pytest.mark.parametrize("lot_size", [0, -1])
def test_plan_refuses_empty_lots(lot_size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan("iso2859-1", lot_size, 1.0)


@pytest.mark.parametrize("kind", ["iso2859-2", "iso3951-1"])
def test_planned_kinds_are_not_implemented_yet(kind: str) -> None:
    with pytest.raises(NotImplementedError, match=rf"{kind}.*not implemented.*iso2859-1"):
        plan(kind, 1000, 1.0)


def test_unknown_kind_is_named() -> None:
    with pytest.raises(NotImplementedError, match="unknown sampling plan kind 'iso2859_1'"):
        plan("iso2859_1", 1000, 1.0)


def test_plan_is_frozen_and_serialisable() -> None:
    p = iso2859_1_plan(1000, 1.0)
    with pytest.raises(AttributeError):
        p.accept = 5  # type: ignore[misc]  # frozen: the test is that runtime refuses it too
    d = p.as_dict()
    assert d == {
        "kind": "iso2859-1",
        "lot_size": 1000,
        "code_letter": "J",
        "aql": 1.0,
        "sample_size": 80,
        "accept": 2,
        "reject": 3,
        "inspect_all": False,
        "source": p.source,
    }
    assert Plan(**json.loads(json.dumps(d))) == p


# --- draw_sample -------------------------------------------------------------------

IDS = [f"m{i:03d}" for i in range(50)]


def test_draw_is_pinned() -> None:
    # A golden value: if this changes, recorded draws can no longer be replayed
    # (a numpy Generator stream change, or a change to the seeding).
    assert draw_sample(IDS, 5, "lot-42") == ["m006", "m013", "m016", "m023", "m040"]


def test_same_seed_same_ids_whatever_the_input_order() -> None:
    first = draw_sample(IDS, 8, "lot-7/2025-03")
    assert draw_sample(list(reversed(IDS)), 8, "lot-7/2025-03") == first
    assert draw_sample(IDS[25:] + IDS[:25], 8, "lot-7/2025-03") == first


def test_duplicate_ids_are_drawn_once() -> None:
    assert draw_sample(IDS + IDS, 8, "s") == draw_sample(IDS, 8, "s")


def test_different_seed_different_ids() -> None:
    assert draw_sample(IDS, 8, "lot-7/2025-03") != draw_sample(IDS, 8, "lot-7/2025-04")


@pytest.mark.parametrize("n", [50, 51, 1000])
def test_sample_at_least_the_population_is_everything(n: int) -> None:
    assert draw_sample(list(reversed(IDS)), n, "x") == IDS


def test_empty_sample_and_negative_size() -> None:
    assert draw_sample(IDS, 0, "x") == []
    with pytest.raises(ValueError, match="negative"):
        draw_sample(IDS, -1, "x")


def test_draw_is_the_same_in_another_process() -> None:
    # A fresh interpreter with a different str-hash salt must draw the same ids.
    code = (
        "import json; from monitor.electricity.sampling import draw_sample; "
        "print(json.dumps(draw_sample([f'm{i:03d}' for i in range(50)], 8, 'lot-9')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == draw_sample(IDS, 8, "lot-9")


@given(
    ids=st.lists(st.text(min_size=1, max_size=6), max_size=40),
    n=st.integers(min_value=0, max_value=50),
    seed=st.text(max_size=10),
)
def test_draw_is_a_sorted_subset_without_duplicates(ids: list[str], n: int, seed: str) -> None:
    out = draw_sample(ids, n, seed)
    assert out == sorted(out)
    assert len(out) == len(set(out)) == min(n, len(set(ids)))
    assert set(out) <= set(ids)
    assert draw_sample(list(reversed(ids)), n, seed) == out


# --- judge -------------------------------------------------------------------------

# Lot 1 000 at AQL 1.0: letter J, n = 80, Ac 2, Re 3.
J = iso2859_1_plan(1000, 1.0)


def test_judge_plan_under_test() -> None:
    assert (J.sample_size, J.accept, J.reject) == (80, 2, 3)


@pytest.mark.parametrize(
    ("nonconforming", "inspected", "verdict"),
    [
        (0, 80, "accept"),
        (2, 80, "accept"),  # at Ac
        (2, 95, "accept"),  # more than the sample inspected
        (3, 80, "reject"),  # at Re
        (3, 3, "reject"),  # at Re before the sample is complete
        (5, 40, "reject"),
        (2, 79, "incomplete"),  # at Ac, one meter short
        (0, 0, "incomplete"),
    ],
)
def test_judge(nonconforming: int, inspected: int, verdict: str) -> None:
    assert judge(J, nonconforming, inspected) == verdict


def test_judge_inspect_all_plan_needs_the_whole_lot() -> None:
    p = iso2859_1_plan(5, 0.65)
    assert judge(p, 0, 4) == "incomplete"
    assert judge(p, 0, 5) == "accept"
    assert judge(p, 1, 1) == "reject"


@pytest.mark.parametrize(("nonconforming", "inspected"), [(-1, 5), (0, -1), (6, 5)])
def test_judge_refuses_impossible_counts(nonconforming: int, inspected: int) -> None:
    with pytest.raises(ValueError):
        judge(J, nonconforming, inspected)
