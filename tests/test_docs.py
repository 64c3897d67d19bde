"""The project's own documentation stays true: generated parts, links, and the facts it states.

`docs/` is the interface reference a user who clones the project reads, so it must not
point outside the repository, its links must resolve, its generated parts must match
the code, and the tables it copies from the code (reject reasons, event codes, the
sampling table, the fare examples) must agree with what the code does.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from monitor import docgen
from monitor.core.catalogue import CATALOGUE
from monitor.core.decision import SEVERITY_RANK, severity_for
from monitor.core.registry import parse_csv
from monitor.core.rulebook import load_rules
from monitor.electricity.sampling import LQS, code_letter, iso2859_1_plan, iso2859_2_plan
from monitor.ingest.telemetry import ELEC_EVENT_CODES, REASONS, TAXI_EVENT_CODES
from monitor.taxi.tariff import TariffBook, charged_fare_cny, fare_cny

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
READMES = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "bench" / "README.md"]
LINKED_PAGES = [*READMES, *sorted(DOCS.glob("*.md"))]
# Walked when this is not a git checkout (e.g. an unpacked source archive).
NOT_SOURCE = {".git", ".venv", "data", "artifacts", "build", "__pycache__", ".mypy_cache"}
NOT_SOURCE |= {".pytest_cache", ".ruff_cache", ".hypothesis"}
# Built from parts, so that this file does not match itself.
OUTSIDE = [("../" + "shared").encode(), ("CONTRACT" + ".md").encode(), ("DOMAIN" + ".md").encode()]

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def tracked_files() -> list[Path]:
    """The repository's files: git's list, else every file outside build and cache folders."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file() and not NOT_SOURCE & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in out.decode().split("\0") if name]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters of any script, digits, _
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, …)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, code blocks left out."""
    return _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))


def broken_links(path: Path) -> list[str]:
    """Relative links of `path` whose file or heading does not exist."""
    bad = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        name, _, fragment = target.partition("#")
        dest = (path.parent / name).resolve() if name else path
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif path.is_relative_to(ROOT) and not dest.is_relative_to(ROOT):
            bad.append(f"{target}: outside the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target}: no heading #{fragment} in {dest.name}")
    return bad


def section(path: Path, heading: str) -> str:
    """The text of a Markdown section, from its heading to the next of the same level."""
    text = path.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    end = re.search(rf"^{level} ", rest, re.M)
    return rest[: end.start()] if end else rest


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in `text`, each a list of rows of cells, header row first."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if not line.startswith("|"):
            if current:
                out.append(current)
            current = []
        elif not re.match(r"^\|[-| ]+\|$", line):  # the rule line under the header
            current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return out


def table(text: str, header: str) -> list[list[str]]:
    """The data rows of the table in `text` whose first header cell is `header`."""
    found = [t[1:] for t in tables(text) if t[0][0] == header]
    assert len(found) == 1, f"expected one table headed {header!r}, found {len(found)}"
    return found[0]


def code_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- the tests that keep docs/ true ------------------------------------------------------


def test_generated_parts_match_the_code() -> None:
    stale = docgen.outdated(ROOT)
    assert not stale, f"run python -m monitor.docgen: out of date: {sorted(map(str, stale))}"


def test_the_route_reference_lists_every_api_route() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    schema = docgen.openapi_schema()
    for path, ops in schema["paths"].items():
        for method in ops:
            assert f"#### `{method.upper()} {path}`" in text


def test_the_cli_reference_lists_every_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for command, _, parser in docgen._commands(docgen.cli_parser(), "monitor", ""):
        assert f"### `{command}`" in text
        for action in docgen._options(parser):
            for option in action.option_strings:
                assert f"`{option}" in text, f"{command} {option} missing from docs/cli.md"


def test_splice_refuses_a_file_without_markers() -> None:
    with pytest.raises(ValueError, match="BEGIN generated: routes"):
        docgen.splice("no markers here\n", "routes", "body")


def test_splice_replaces_only_between_the_markers() -> None:
    begin, end = docgen.BEGIN.format(name="x"), docgen.END.format(name="x")
    text = f"before\n{begin}\nold\n{end}\nafter\n"
    assert docgen.splice(text, "x", "new") == f"before\n{begin}\nnew\n{end}\nafter\n"


def test_no_tracked_file_points_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue  # deleted in the work tree, not yet in the index
        data = path.read_bytes()
        found += [f"{path.relative_to(ROOT)}: {p.decode()}" for p in OUTSIDE if p in data]
    assert not found, "files referencing what a clone does not have:\n" + "\n".join(found)


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_link_check_catches_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad anchor](#nothing)\n")
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "#nothing: no heading #nothing in page.md",
    ]


def test_slug_follows_github() -> None:
    assert slug('Reliability: what "nothing lost" means here') == (
        "reliability-what-nothing-lost-means-here"
    )
    assert slug("`monitor run`") == "monitor-run"
    assert slug("Sampling plans: ISO 2859-1 (GB/T 2828.1)") == "sampling-plans-iso-2859-1-gbt-28281"


# -- facts the pages copy from the code ----------------------------------------------------


def test_dead_letter_reasons_are_the_code_reasons() -> None:
    rows = table(section(DOCS / "mqtt.md", "### Dead letters"), "reason")
    assert sorted(code_names(r[0])[0] for r in rows) == sorted(REASONS)


def test_event_codes_are_the_code_codes() -> None:
    elec = section(DOCS / "mqtt.md", "### `meters/elec/{district}/{meter}/event`")
    listed = {c for row in table(elec, "code") for c in code_names(row[0])}
    assert listed == set(ELEC_EVENT_CODES)
    taxi = section(DOCS / "mqtt.md", "### `meters/taxi/{meter}/event`")
    code_row = next(r for r in table(taxi, "field") if "**`code`**" in r[0])
    assert set(code_names(code_row[1])) == set(TAXI_EVENT_CODES)


def test_tariff_body_example_is_a_valid_tariff_and_the_fare_table_holds() -> None:
    body = section(DOCS / "mqtt.md", "## Tariff body")
    example = re.search(r"```yaml\n(.*?)```", body, re.S)
    assert example is not None
    book = TariffBook.from_bodies(yaml.safe_load(example.group(1)))
    tariff = book["SH-2022"]
    fares = section(DOCS / "mqtt.md", "### Fare formula")
    rows = table(fares, "trip")
    assert len(rows) == 4
    trips = {  # the trips the table describes: (km, waiting s, local end time)
        "2 km by day": (2, 0, "10:00"),
        "10 km by day, 300 s waiting": (10, 300, "10:00"),
        "12.4 km by day, 250 s waiting": (12.4, 250, "10:00"),
        "20 km ending at 23:30": (20, 0, "23:30"),
    }
    for trip, formula, charged in rows:
        km, wait, at = trips[trip]
        end = datetime.fromisoformat(f"2026-03-01T{at}:00+08:00")
        assert f"{fare_cny(tariff, km, wait, end):.2f}" == formula.rsplit(" ", 1)[-1]
        assert charged_fare_cny(tariff, km, wait, end) == float(charged)


def test_registry_example_parses() -> None:
    example = re.search(r"```csv\n(.*?)```", (DOCS / "registry.md").read_text("utf-8"), re.S)
    assert example is not None
    parsed = parse_csv(example.group(1))
    assert not parsed.errors and len(parsed.rows) == 3


def test_sampling_tables_are_the_plans_the_code_draws() -> None:
    text = section(DOCS / "metrology.md", "### Sampling plans: ISO 2859-1 (GB/T 2828.1)")
    header, letters, sizes = tables(text)[0]
    assert header[0] == "lot size" and letters[0] == "letter" and sizes[0] == "n"
    for lots, letter, n in zip(header[1:], letters[1:], sizes[1:], strict=True):
        smallest = int(lots.replace(" ", "").replace("≥", "").split("–")[0])
        assert code_letter(smallest) == letter
        assert code_letter(_largest_lot(letter)) == letter
        assert int(n.replace(" ", "")) == _own_sample_size(letter)
    rows = table(text, "letter")
    assert len(rows) == 14
    for row in rows:
        for letter in row[0].split(", "):
            lot = _largest_lot(letter)
            for aql, cell in zip((0.65, 1.0, 1.5, 2.5), row[1:], strict=True):
                plan = iso2859_1_plan(lot, aql)
                if cell.startswith("n="):  # an arrow to another letter's plan, resolved
                    n, ac = cell[2:].split(", ")
                    wanted = int(n)
                else:
                    ac, wanted = cell, _own_sample_size(letter)
                assert plan.accept == int(ac) and plan.reject == int(ac) + 1, (letter, aql)
                # A plan whose sample reaches the lot size inspects every meter.
                assert plan.sample_size == min(wanted, lot), (letter, aql)
                assert plan.inspect_all == (wanted >= lot), (letter, aql)


def test_limiting_quality_table_is_the_plans_the_code_draws() -> None:
    text = section(
        DOCS / "metrology.md", "### Sampling plans: ISO 2859-2 procedure A (limiting quality)"
    )
    header, *rows = tables(text)[0]
    assert header[0] == "lot size"
    assert [float(h.removeprefix("LQ ").removesuffix(" %")) for h in header[1:]] == list(LQS)
    assert len(rows) == 13
    for row in rows:
        bounds = row[0].replace(" ", "").replace(">", "").split("–")
        # Both ends of the range (the open-ended last row: its first lot and a large one).
        lots = [int(bounds[0]) + (1 if len(bounds) == 1 else 0)]
        lots.append(int(bounds[1]) if len(bounds) == 2 else 10**7)
        for lq, cell in zip(LQS, row[1:], strict=True):
            n, ac = (int(v) for v in cell.split("/"))
            for lot in lots:
                plan = iso2859_2_plan(lot, lq)
                assert (plan.accept, plan.reject) == (ac, ac + 1), (lot, lq)
                assert plan.sample_size == min(n, lot), (lot, lq)


_UPPER = {"A": 8, "B": 15, "C": 25, "D": 50, "E": 90, "F": 150, "G": 280, "H": 500}
_UPPER |= {"J": 1200, "K": 3200, "L": 10000, "M": 35000, "N": 150000, "P": 500000}
_UPPER |= {"Q": 10**7}


def _largest_lot(letter: str) -> int:
    return _UPPER[letter]


def _own_sample_size(letter: str) -> int:
    sizes = {"A": 2, "B": 3, "C": 5, "D": 8, "E": 13, "F": 20, "G": 32, "H": 50, "J": 80}
    sizes |= {"K": 125, "L": 200, "M": 315, "N": 500, "P": 800, "Q": 1250}
    return sizes[letter]


def documented_rules() -> dict[str, str]:
    """Rule name → alert severity column of decisions.md's rule table (`.x` continues the
    first name of its cell)."""
    rows = table((DOCS / "decisions.md").read_text(encoding="utf-8"), "rule")
    out = {}
    for row in rows:
        names = code_names(row[0])
        base = names[0].rsplit(".", 1)[0] if names else ""
        for name in names:
            out[base + name if name.startswith(".") else name] = row[-1]
    return out


def test_the_rule_table_is_the_catalogue_and_its_severities() -> None:
    rules = load_rules(ROOT / "config" / "rules.yaml").rules
    documented = documented_rules()
    evaluation = {k: v for k, v in documented.items() if not k.startswith("offline.")}
    assert set(evaluation) == set(CATALOGUE)
    for name, entry in CATALOGUE.items():
        group, block = entry.block.split(".")
        configured = getattr(getattr(rules, group), block).severity
        worst = max(
            (severity_for(state, entry.inspect, configured) for state in entry.states),
            key=lambda s: SEVERITY_RANK[s],
        )
        assert documented[name] == ("—" if worst == "info" else worst), name
