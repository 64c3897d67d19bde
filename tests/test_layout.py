"""The package's dependency direction: a reading flows one way, and imports follow it.

Each top-level part of `monitor` has a rank; a module may import its own part and parts
of a lower rank, never one of its own rank (the two domains stay apart) or above. The
exceptions are listed with their reason; the list may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"

RANK = {
    "core": 0,
    "platform": 1,
    "ingest": 2,
    "store": 2,
    "electricity": 3,
    "taxi": 3,
    "evaluation": 4,
    "alerts": 5,
    "api": 6,
    "simulate": 7,
    "service": 8,
    "demo": 9,
    "evaluate_command": 9,
    "cli": 10,
    "docgen": 11,
    "__main__": 11,
    "__init__": 0,
}

# The settings tree is read once at start and gathers every part's settings model.
SETTINGS_TREE = "monitor.platform.config"

# (importing module, imported module): why the edge stands for now.
ALLOWED = {
    # The pass hands its conditions to the alert book itself (see evaluation/runner.py).
    ("monitor.evaluation.runner", "monitor.alerts.book"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("monitor"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("monitor"))
    return found


def existing(module: str) -> str:
    """`monitor.x.y.name` → the longest prefix that is a module or package of the tree."""
    pieces = module.split(".")
    while pieces:
        path = PACKAGE.parent.joinpath(*pieces)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(pieces)
        pieces.pop()
    return module


def edges() -> set[tuple[str, str]]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path)
        for target in imports_of(path):
            out.add((source, existing(target)))
    return out


def test_every_part_has_a_rank() -> None:
    parts = {part(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(RANK), f"give these a rank in RANK: {sorted(parts - set(RANK))}"


def test_imports_follow_the_data_flow() -> None:
    wrong = sorted(
        (source, target)
        for source, target in edges()
        if part(source) != part(target)
        and RANK[part(target)] >= RANK[part(source)]
        and (source, target) not in ALLOWED
        and source != SETTINGS_TREE
    )
    assert not wrong, "imports against the direction core ← … ← service:\n" + "\n".join(
        f"  {s} → {t}" for s, t in wrong
    )


def test_core_imports_nothing_else_of_the_package() -> None:
    outside = sorted(
        (s, t) for s, t in edges() if part(s) == "core" and part(t) not in ("core", "__init__")
    )
    assert not outside, outside


def test_the_allowed_exceptions_still_exist() -> None:
    # An exception that no longer occurs is removed from the list, so it cannot return.
    stale = ALLOWED - edges()
    assert not stale, f"remove from ALLOWED: {sorted(stale)}"
