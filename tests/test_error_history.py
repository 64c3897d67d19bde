"""A meter's estimated error over time: one point per meter and day, the day's last pass,
kept for ERROR_HISTORY_DAYS, and no error where the estimate could not be judged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.store.state import ERROR_HISTORY_DAYS, SqliteState


def body(meter: str, as_of: str, error: float | None, state: str = "normal") -> dict[str, Any]:
    ci = [error - 0.3, error + 0.3] if error is not None else None
    return {
        "id": meter,
        "kind": "elec",
        "decision": "keep",
        "state": state,
        "as_of": as_of,
        "rules_version": "test@1",
        "evidence": {"error_pct": error, "error_ci_pct": ci},
    }


def test_one_point_per_day_the_last_pass_of_the_day(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state.sqlite")
    try:
        state.save_decisions("meter", [body("E1", "2026-03-01T02:00:00.000Z", 1.0)])
        state.save_decisions("meter", [body("E1", "2026-03-01T09:00:00.000Z", 1.2)])
        state.save_decisions("meter", [body("E1", "2026-03-02T02:00:00.000Z", None, "unknown")])
        lot = {**body("L1", "2026-03-02T02:00:00.000Z", None), "evidence": {"meters": 3}}
        state.save_decisions("lot", [lot])
        points = state.error_history("E1")
        assert [(p.as_of[:10], p.error_pct, p.state) for p in points] == [
            ("2026-03-01", 1.2, "normal"),
            ("2026-03-02", None, "unknown"),
        ]
        assert (points[0].low_pct, points[0].high_pct) == (1.2 - 0.3, 1.2 + 0.3)
        assert state.error_history("L1") == []  # lots have no error of their own
    finally:
        state.close()


def test_old_days_are_dropped(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state.sqlite")
    try:
        state.save_decisions("meter", [body("E1", "2025-01-01T00:00:00.000Z", 0.5)])
        state.save_decisions("meter", [body("E2", "2026-03-01T00:00:00.000Z", 0.4)])
        assert state.error_history("E1") == []  # more than ERROR_HISTORY_DAYS before
        assert ERROR_HISTORY_DAYS < 425
        assert len(state.error_history("E2")) == 1
    finally:
        state.close()
