"""The rules file: the shipped one is valid, a bad one is refused with line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.core.rulebook import diff, load_rules, parse_rules
from monitor.core.yamlfile import ConfigError

RULES = Path(__file__).resolve().parent.parent / "config" / "rules.yaml"


def test_shipped_rules_are_valid_and_versioned() -> None:
    book = load_rules(RULES)
    assert book.version.startswith("shanghai-default@2026.2+")
    assert book.rules.elec.error_limit.in_service_limit_pct["2"] == 3.5
    assert book.rules.taxi.distance.limit_low_pct == -4.0


def test_every_rule_names_its_source() -> None:
    rules = load_rules(RULES).rules
    for group in (rules.elec, rules.taxi):
        for name in type(group).model_fields:
            rule = getattr(group, name)
            assert len(rule.source) >= 2 and len(rule.description) >= 10, name


def test_a_changed_threshold_changes_the_version_and_is_reported() -> None:
    text = RULES.read_text()
    changed = parse_rules(text.replace("watch_fraction: 0.6", "watch_fraction: 0.7"), "new.yaml")
    old = load_rules(RULES)
    assert changed.version != old.version
    assert diff(old, changed) == ["elec.error_limit.watch_fraction: 0.6 → 0.7"]


def test_bad_rules_are_refused_with_line_and_reason() -> None:
    text = RULES.read_text().replace("min_trips: 30", "min_trips: 2")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "min_trips: 2" in ln)
    with pytest.raises(ConfigError) as err:
        parse_rules(text, "bad.yaml")
    assert f"bad.yaml:{line}: taxi.distance.min_trips" in str(err.value)


def test_inconsistent_bands_and_unknown_aql_are_refused() -> None:
    text = RULES.read_text()
    with pytest.raises(ConfigError, match="guard_low"):
        parse_rules(text.replace("guard_low_pct: -3.0", "guard_low_pct: -5.0"), "x")
    with pytest.raises(ConfigError, match=r"AQL 4\.0"):
        parse_rules(text.replace("aql: 1.0", "aql: 4.0"), "x")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_rules("elec: [", "x")


def _with_lot_plan(text: str, plan_yaml: str) -> str:
    """The shipped rules with the lot plan block replaced by `plan_yaml` (indented lines)."""
    # The shipped lot plan block: `plan:` up to and including `family_plans: []`.
    old = text[text.index("    plan:  ") : text.index("    family_plans: []\n") + 21]
    assert old in text
    return text.replace(old, plan_yaml)


def test_a_limiting_quality_plan_and_family_plans_are_read() -> None:
    text = _with_lot_plan(
        RULES.read_text(),
        "    plan: {kind: iso2859-2, lq: 5.0}\n"
        "    family_plans:\n"
        "      - family: {accuracy_class: '1'}\n"
        "        plan: {kind: iso2859-1, aql: 0.65}\n"
        "      - family: {manufacturer: ACME, model: DDZY-1}\n"
        "        plan: {kind: iso2859-2, lq: 3.15}\n",
    )
    lot = parse_rules(text, "x").rules.elec.lot
    assert (lot.plan.kind, lot.plan.quality_pct) == ("iso2859-2", 5.0)
    assert lot.plan_for("ACME", "DDZY-1", "2").quality_pct == 3.15
    assert lot.plan_for("ACME", "DDZY-1", "1").quality_pct == 0.65  # first match wins
    assert lot.plan_for("ACME", "DDZY-2", "2").quality_pct == 5.0
    assert lot.plan_for(None, None, None).kind == "iso2859-2"


@pytest.mark.parametrize(
    ("plan_yaml", "message"),
    [
        ("    plan: {kind: iso2859-2}\n", "iso2859-2 needs an lq"),
        ("    plan: {kind: iso2859-2, lq: 4.0}\n", "iso2859-2 needs an lq"),
        ("    plan: {kind: iso2859-2, lq: 5.0, aql: 1.0}\n", "aql belongs to iso2859-1"),
        ("    plan: {kind: iso2859-1, lq: 5.0}\n", "lq belongs to iso2859-2"),
        ("    plan: {kind: iso3951-1, aql: 1.0}\n", "iso2859-1"),
        (
            "    family_plans:\n      - family: {}\n        plan: {kind: iso2859-1}\n",
            "names at least one of",
        ),
    ],
)
def test_a_plan_without_its_quality_level_is_refused(plan_yaml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules(_with_lot_plan(RULES.read_text(), plan_yaml), "x")


def test_an_iso2859_1_plan_without_aql_takes_one_percent() -> None:
    text = _with_lot_plan(RULES.read_text(), "    plan: {kind: iso2859-1}\n")
    assert parse_rules(text, "x").rules.elec.lot.plan.quality_pct == 1.0
