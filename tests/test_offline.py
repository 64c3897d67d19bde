"""Offline detection in event time, with the district roll-up, and its alert scope."""

from __future__ import annotations

from pathlib import Path

from monitor.alerts.book import AlertBook, Condition
from monitor.alerts.offline import OFFLINE_RULES, OfflineSettings, offline_conditions
from monitor.evaluation.runner import EVALUATION_RULES

NOW = 1772294400000
MIN = 60_000
SETTINGS = OfflineSettings()


def test_silent_meters_by_their_own_cadence() -> None:
    seen = {
        "E1": ("elec", "D1", NOW - 30 * MIN),  # 2 periods: fine
        "E2": ("elec", "D1", NOW - 3 * 60 * MIN),  # 12 periods of 15 min: offline
        "E3": ("elec", "D1", NOW),
        "E4": ("elec", "D1", NOW),
        "T1": ("taxi", None, NOW - 30 * MIN),  # 6 heartbeats missed: fine
        "T2": ("taxi", None, NOW - 60 * MIN),  # 12 missed: offline
    }
    out = offline_conditions(seen, NOW, SETTINGS)
    assert [(c.rule, c.subject, c.kind) for c in out] == [
        ("offline.meter", "E2", "elec"),
        ("offline.meter", "T2", "taxi"),
    ]
    assert out[0].evidence["silent_s"] == 3 * 3600


def test_most_of_a_district_silent_is_one_district_alert() -> None:
    seen = {f"E{i}": ("elec", "D1", NOW - 5 * 60 * MIN) for i in range(8)}
    seen |= {f"F{i}": ("elec", "D1", NOW) for i in range(2)}
    seen |= {
        "G1": ("elec", "D2", NOW - 5 * 60 * MIN),
        "G2": ("elec", "D2", NOW),
        "G3": ("elec", "D2", NOW),
    }
    out = offline_conditions(seen, NOW, SETTINGS)
    assert [(c.rule, c.subject) for c in out] == [
        ("offline.district", "D1"),
        ("offline.meter", "G1"),
    ]
    assert out[0].evidence["silent_meters"] == 8 and out[0].severity == "major"


def test_evaluation_passes_do_not_clear_offline_alerts(tmp_path: Path) -> None:
    book = AlertBook(tmp_path / "a.sqlite", clear_after_ms=0)
    seen = {
        "E2": ("elec", "D1", NOW - 3 * 60 * MIN),
        **{f"X{i}": ("elec", "D1", NOW) for i in range(3)},
    }
    book.observe(offline_conditions(seen, NOW, SETTINGS), NOW, OFFLINE_RULES)
    finding = Condition("elec.error_limit", "elec", "E9", "major", "m", NOW + 1)
    changes = book.observe([finding], NOW + 10 * MIN, EVALUATION_RULES)
    assert [c.action for c in changes] == ["opened"]  # the offline alert stays open
    back = {
        "E2": ("elec", "D1", NOW + 20 * MIN),
        **{f"X{i}": ("elec", "D1", NOW + 20 * MIN) for i in range(3)},
    }
    cleared = book.observe(
        offline_conditions(back, NOW + 20 * MIN, SETTINGS), NOW + 20 * MIN, OFFLINE_RULES
    )
    assert [(c.action, c.alert["rule"]) for c in cleared] == [("resolved", "offline.meter")]
    open_rules = [a["rule"] for a in book.list("open", None, None, 0, 10)]
    assert open_rules == ["elec.error_limit"]


def test_service_checks_offline_only_when_its_own_view_is_trustworthy(
    tmp_path: Path, mosquitto: object
) -> None:
    from monitor.core.clock import format_ts
    from monitor.platform.config import load_settings
    from monitor.service import Service
    from tests.helpers import BASE_MS, Publisher, reading, wait_for
    from tests.services import Mosquitto

    assert isinstance(mosquitto, Mosquitto)
    env = {
        "MONITOR_MQTT_URL": mosquitto.url,
        "MONITOR_DATA_DIR": str(tmp_path / "data"),
        "MONITOR_ALERTS__OFFLINE__GRACE_S": "0",
        "MONITOR_SCHEDULING__EVALUATE_CRON": "",
    }
    repo = Path(__file__).resolve().parent.parent
    service = Service(load_settings(repo / "config", env))
    parts = service.start()
    try:
        assert parts.worker.wait_connected(15)
        pub = Publisher(mosquitto.url)
        pub.send(*reading(0, meter="OLD"))
        pub.send(*reading(40, meter="NEW"))  # 10 hours later in event time
        pub.wait_all()
        wait_for(
            lambda: parts.state.seen("NEW") is not None and parts.state.seen("OLD") is not None,
            15,
            "both meters seen",
        )
        assert service.check_offline() == 1
        alerts = parts.alerts.list("open", None, None, 0, 10)
        assert [(a["rule"], a["meter"]) for a in alerts] == [("offline.meter", "OLD")]
        # judged as of the newest telemetry (NEW's reading), not the wall clock
        assert alerts[0]["evidence"]["last_seen"] == format_ts(BASE_MS)
        assert alerts[0]["last_seen"] == format_ts(BASE_MS + 40 * 900_000)
        mosquitto.stop()
        wait_for(lambda: not parts.worker.connected, 15, "the worker to notice the broker is gone")
        assert service.check_offline() == 0  # our own outage is not the meters'
        pub.close()
    finally:
        service.stop()
