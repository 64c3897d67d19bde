"""Hot reload of the rules file: valid change taken, bad change refused, old kept."""

from __future__ import annotations

import shutil
from pathlib import Path

from monitor.core.rulebook import RuleBook, load_rules
from monitor.platform.reload import HotFile

RULES = Path(__file__).resolve().parent.parent / "config" / "rules.yaml"


def test_valid_change_is_picked_up_and_bad_change_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    shutil.copy(RULES, path)
    hot: HotFile[RuleBook] = HotFile(path, load_rules)
    first = hot.current.version
    assert hot.check() is False  # unchanged

    path.write_text(RULES.read_text().replace("min_trips: 30", "min_trips: 40"))
    assert hot.check() is True
    assert hot.current.rules.taxi.distance.min_trips == 40
    assert hot.current.version != first

    good = hot.current
    path.write_text(RULES.read_text().replace("min_trips: 30", "min_trips: many"))
    assert hot.check() is False
    assert hot.current is good
    assert hot.last_error is not None and "taxi.distance.min_trips" in hot.last_error
    assert f"{path}:" in hot.last_error  # the line is named
    assert hot.check() is False and hot.failures == 1  # reported once

    path.unlink()
    assert hot.check() is False and hot.current is good
