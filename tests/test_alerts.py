"""Alerts: one per condition, lifecycle with actor and comment, hysteresis, reopen,
restart, MQTT notification through a real Mosquitto, and the inbox API."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from monitor.alerts.book import AlertBook, Change, Condition, TransitionError, conditions_of
from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.core.clock import format_ts
from monitor.core.decision import (
    Decision,
    Finding,
    Reason,
    Stamp,
    decide_meter,
    severity_for,
)
from monitor.core.ports import MeterPoint, Series
from monitor.core.rulebook import load_rules
from monitor.core.schema import ELEC_READING, Record
from monitor.electricity import rules as rules_elec
from monitor.electricity.rules import function_findings
from monitor.evaluation.runner import Evaluator
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from tests.helpers import BASE_MS, Collector, Publisher, received_live, wait_for
from tests.services import Mosquitto

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "config" / "rules.yaml").rules
DAY = 86_400_000
STAMP = Stamp(format_ts(BASE_MS), "test@1")


def condition(subject: str = "E1", rule: str = "elec.error_limit", day: float = 0) -> Condition:
    return Condition(
        rule,
        "elec",
        subject,
        "major",
        f"{subject} beyond the limit",
        BASE_MS + int(day * DAY),
        {"error_pct": 4.2},
        meter=subject,
        lot="L1",
        district="D1",
    )


def book(tmp: Path) -> AlertBook:
    return AlertBook(tmp / "state.sqlite", clear_after_ms=2 * DAY)


def test_a_condition_repeated_a_thousand_times_is_one_alert(tmp_path: Path) -> None:
    b = book(tmp_path)
    actions = [
        c.action
        for i in range(1000)
        for c in b.observe([replace(condition(), at_ms=BASE_MS + i)], BASE_MS + i)
    ]
    assert actions[0] == "opened" and set(actions[1:]) == {"repeated"}
    alerts = b.list(None, None, None, 0, 10)
    assert len(alerts) == 1 and alerts[0]["count"] == 1000 and alerts[0]["status"] == "open"
    assert alerts[0]["first_seen"] < alerts[0]["last_seen"]


def test_ack_and_resolve_keep_actor_and_comment(tmp_path: Path) -> None:
    b = book(tmp_path)
    [opened] = b.observe([condition()], BASE_MS)
    aid = opened.alert["id"]
    b.act(aid, "ack", "inspector.li", "on-site check booked", BASE_MS + DAY)
    with pytest.raises(TransitionError):
        b.act(aid, "ack", "someone", "again", None)
    done = b.act(aid, "resolve", "inspector.li", "meter replaced", BASE_MS + 2 * DAY)
    history = done.alert["history"]
    assert [(h["action"], h["actor"]) for h in history] == [
        ("opened", "system"),
        ("acknowledged", "inspector.li"),
        ("resolved", "inspector.li"),
    ]
    assert history[2]["comment"] == "meter replaced"
    with pytest.raises(TransitionError):
        b.act(aid, "resolve", "x", "y", None)
    with pytest.raises(KeyError):
        b.act(999, "ack", "x", "y", None)


WALL_S = 1_796_284_800.0  # 2026-12-03T08:00:00Z: a person acts long after the data's time


def test_history_shows_both_clocks_labelled_and_in_order(tmp_path: Path) -> None:
    wall = [WALL_S]
    b = AlertBook(tmp_path / "state.sqlite", 2 * DAY, clock=lambda: wall[0])
    [opened] = b.observe([condition(day=0)], BASE_MS)
    state = SqliteState(tmp_path / "state.sqlite")
    newest = [Record(ELEC_READING, "E1", "D1", BASE_MS + DAY, {})]
    state.note_seen(summarise_seen(newest, received_live(newest)))
    client = TestClient(
        create_app(
            ApiContext(
                load_settings(tmp_path / "none", {}),
                state,
                EmbeddedStore(tmp_path / "t.sqlite", Metrics()),
                Metrics(),
                lambda: True,
                Evaluator(EmbeddedStore(tmp_path / "t2.sqlite", Metrics()), state),
                lambda: load_rules(REPO / "config" / "rules.yaml"),
                None,
                b,
            )
        )
    )
    wall[0] = WALL_S + 600
    acked = client.post(f"/api/alerts/{opened.alert['id']}/ack", json={"actor": "ops"}).json()
    opened_step, acked_step = acked["history"]
    # event time: the pass that opened it, then the newest telemetry when ops acted
    assert opened_step["event_time"] == format_ts(BASE_MS) == acked["first_seen"]
    assert acked_step["event_time"] == format_ts(BASE_MS + DAY)
    # wall clock: when each step was written
    assert opened_step["recorded_at"] == "2026-12-03T08:00:00Z"
    assert acked_step["recorded_at"] == "2026-12-03T08:10:00Z"
    assert all(h["at"] == h["event_time"] for h in acked["history"])  # `at` is event time
    # an act with no telemetry clock yet is not placed before the alert's last sighting
    other = b.observe([condition("E2", day=3)], BASE_MS + 3 * DAY)[0]
    done = b.act(other.alert["id"], "resolve", "ops", "", None).alert["history"][-1]
    assert done["event_time"] == format_ts(BASE_MS + 3 * DAY)
    state.close()


def test_history_written_before_the_labels_is_labelled(tmp_path: Path) -> None:
    b = book(tmp_path)
    [opened] = b.observe([condition()], BASE_MS)
    legacy = [
        {"at": format_ts(BASE_MS), "action": "opened", "actor": "system", "comment": "m"},
        {
            "at": "2026-12-03T08:00:00+00:00",
            "action": "acknowledged",
            "actor": "ops",
            "comment": "",
        },
    ]
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("UPDATE alerts SET history = ?", (json.dumps(legacy),))
    db.commit()
    db.close()
    found = b.get(opened.alert["id"])
    assert found is not None
    system, person = found["history"]
    assert (system["event_time"], system["recorded_at"]) == (format_ts(BASE_MS), None)
    assert (person["event_time"], person["recorded_at"]) == (None, "2026-12-03T08:00:00+00:00")


def test_auto_resolve_needs_the_condition_gone_long_enough_then_reopens(tmp_path: Path) -> None:
    b = book(tmp_path)
    b.observe([condition()], BASE_MS)
    assert b.observe([], BASE_MS + DAY) == []  # one clean pass: no flapping
    [resolved] = b.observe([], BASE_MS + 3 * DAY)
    assert resolved.action == "resolved" and resolved.alert["status"] == "resolved"
    [back] = b.observe([condition(day=4)], BASE_MS + 4 * DAY)
    assert back.action == "reopened" and back.alert["status"] == "open"
    assert [h["action"] for h in back.alert["history"]] == ["opened", "resolved", "reopened"]
    assert back.alert["count"] == 2 and len(b.list(None, None, None, 0, 10)) == 1


def test_a_restart_neither_loses_nor_refires(tmp_path: Path) -> None:
    first = book(tmp_path)
    first.observe([condition("E1"), condition("E2")], BASE_MS)
    first.close()
    again = book(tmp_path)
    changes = again.observe([condition("E1"), condition("E2")], BASE_MS + 1000)
    assert [c.action for c in changes] == ["repeated", "repeated"]
    assert [a["count"] for a in again.list("open", None, None, 0, 10)] == [2, 2]


def test_severity_is_the_rules_bounded_by_what_the_finding_calls_for() -> None:
    assert severity_for("faulty", False, "major") == "critical"  # replaced: critical
    assert severity_for("suspect", False, "major") == "major"  # the block's own
    assert severity_for("suspect", True, "critical") == "critical"  # a broken seal
    assert severity_for("normal", True, "major") == "major"  # a tamper inspection
    assert severity_for("watch", False, "critical") == "minor"  # kept: minor at most
    assert severity_for("watch", False, "info") == "info"
    assert severity_for("unknown", False, "critical") == "info"  # too little data: none
    assert severity_for("normal", False, "critical") == "info"


def elec_decision(findings: list[Finding], evidence: dict[str, object] | None = None) -> Decision:
    return decide_meter("E1", "elec", findings, None, None, evidence or {"district": "D1"}, STAMP)


def test_a_register_drop_is_a_minor_alert_of_a_meter_kept_in_watch() -> None:
    # 5 kWh after 23 022 kWh: the register was reset; the meter stays in service
    energy = [23_020.0 + 0.5 * i for i in range(5)] + [5.0 + 0.5 * i for i in range(5)]
    ts = np.arange(len(energy), dtype=np.int64) * 900_000
    findings = function_findings(
        Series(ts, {"energy_kwh": np.array(energy)}), RULES.elec.function_failure
    )
    d = elec_decision(findings)
    assert (d.state, d.decision) == ("watch", "keep")
    [c] = conditions_of([d], BASE_MS)
    assert (c.rule, c.severity) == ("elec.function_failure.reset", "minor")
    assert d.reasons[0].severity == "minor"  # the decision JSON says the same


def test_findings_of_one_block_are_one_alert_at_the_worst_severity() -> None:
    limit = Reason("taxi.distance.limit", 5.2, [-4.0, 1.0], "beyond the limit")
    cusum = Reason("taxi.distance.cusum", 7.0, 5.0, "CUSUM alarm")
    fare = Reason("taxi.fare.systematic", 1.0, 0.2, "every fare too high")
    findings = [
        Finding("suspect", cusum, rule_severity="major"),
        Finding("faulty", limit, rule_severity="major"),
        Finding("suspect", fare, inspect=True, rule_severity="major"),
        Finding("unknown", Reason("taxi.distance.min_trips", 12, 30, "few trips")),
    ]
    d = decide_meter("T1", "taxi", findings, None, None, {}, STAMP)
    found = {c.block: c for c in conditions_of([d], BASE_MS)}
    assert set(found) == {"taxi.distance", "taxi.fare"}  # nothing for too few trips
    distance = found["taxi.distance"]
    assert (distance.rule, distance.severity) == ("taxi.distance.limit", "critical")
    assert [r["rule"] for r in distance.evidence["reasons"]] == [
        "taxi.distance.limit",
        "taxi.distance.cusum",
    ]
    assert found["taxi.fare"].severity == "major"


def test_an_unknown_meter_with_an_inspection_alerts_only_the_inspection() -> None:
    # the taxi: fewer than 30 usable trips, and a stale tariff
    findings = [
        Finding("unknown", Reason("taxi.distance.min_trips", 12, 30, "few trips")),
        Finding(
            "suspect",
            Reason("taxi.tariff.overdue", "SH-2026", "2026-03-03T00:00:00.000Z", "late"),
            inspect=True,
            rule_severity=RULES.taxi.tariff.severity,
        ),
    ]
    d = decide_meter("T1", "taxi", findings, None, None, {}, STAMP)
    assert [(c.rule, c.severity) for c in conditions_of([d], BASE_MS)] == [
        ("taxi.tariff.overdue", "major")
    ]


def test_the_alert_follows_its_worst_rule_as_the_condition_grows(tmp_path: Path) -> None:
    b = book(tmp_path)
    guard = Finding("suspect", Reason("taxi.distance.guard_band", 0.9, [-3.0, 0.5], "out"))
    limit = Finding("faulty", Reason("taxi.distance.limit", 2.0, [-4.0, 1.0], "beyond"))
    first = decide_meter("T1", "taxi", [guard], None, None, {}, STAMP)
    later = decide_meter("T1", "taxi", [limit, guard], None, None, {}, STAMP)
    [opened] = b.observe(conditions_of([first], BASE_MS), BASE_MS)
    [grown] = b.observe(conditions_of([later], BASE_MS + DAY), BASE_MS + DAY)
    assert grown.action == "repeated" and grown.alert["id"] == opened.alert["id"]
    assert (grown.alert["rule"], grown.alert["severity"]) == ("taxi.distance.limit", "critical")


def test_changes_are_published_once_on_mqtt(tmp_path: Path, mosquitto: Mosquitto) -> None:
    inbox = Collector(mosquitto.url, "monitor/alerts/#")
    pub = Publisher(mosquitto.url, "alert-publisher")
    b = book(tmp_path)

    def notify(change: Change) -> None:
        a = change.alert
        pub.send(f"monitor/alerts/{a['severity']}/{a['kind']}", {**a, "action": change.action})

    for i in range(1000):
        for change in b.observe([condition()], BASE_MS + i):
            if change.action != "repeated":
                notify(change)
    for change in b.observe([], BASE_MS + 3 * DAY):
        notify(change)
    pub.wait_all()
    wait_for(lambda: len(inbox.messages) == 2, 10, "two notifications")
    assert [m[0] for m in inbox.messages] == ["monitor/alerts/major/elec"] * 2
    assert [json.loads(m[1])["action"] for m in inbox.messages] == ["opened", "resolved"]
    assert json.loads(inbox.messages[1][1])["count"] == 1000
    inbox.close()
    pub.close()


def test_inbox_api(tmp_path: Path) -> None:
    b = book(tmp_path)
    b.observe([condition(f"E{i}", day=0) for i in range(5)], BASE_MS)
    b.observe([condition("T1", rule="taxi.seal.event", day=1)], BASE_MS + DAY)
    state = SqliteState(tmp_path / "state.sqlite")
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    rules = load_rules(REPO / "config" / "rules.yaml")
    client = TestClient(
        create_app(
            ApiContext(
                load_settings(tmp_path / "none", {}),
                state,
                store,
                Metrics(),
                lambda: True,
                Evaluator(store, state),
                lambda: rules,
                None,
                b,
            )
        )
    )
    page = client.get("/api/alerts", params={"limit": 4}).json()
    rest = client.get("/api/alerts", params={"cursor": page["next"]}).json()
    assert len(page["items"]) == 4 and len(rest["items"]) == 2 and rest["next"] is None
    since = client.get("/api/alerts", params={"since": BASE_MS + 1}).json()["items"]
    assert [a["meter"] for a in since] == ["T1"]
    aid = page["items"][0]["id"]
    r = client.post(f"/api/alerts/{aid}/ack", json={"actor": "ops", "comment": "looking"})
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    assert client.post(f"/api/alerts/{aid}/ack", json={"actor": "ops"}).status_code == 409
    assert (
        client.post(f"/api/alerts/{aid}/resolve", json={"comment": "no actor"}).status_code == 422
    )
    assert client.post("/api/alerts/9999/resolve", json={"actor": "ops"}).status_code == 404
    acked = client.get("/api/alerts", params={"status": "acknowledged"}).json()["items"]
    assert [a["id"] for a in acked] == [aid]
    assert client.get(f"/api/alerts/{aid}").json()["history"][-1]["comment"] == "looking"
    assert client.get("/api/alerts", params={"severity": "urgent"}).status_code == 422
    by_meter = client.get("/api/alerts", params={"meter": "E3"}).json()["items"]
    assert [a["meter"] for a in by_meter] == ["E3"]
    by_rule_family = client.get("/api/alerts", params={"kind": "elec", "lot": "L1"}).json()
    assert len(by_rule_family["items"]) == 6
    assert client.get("/api/alerts", params={"kind": "lot"}).json()["items"] == []
    wrong = client.get("/api/alerts", params={"kind": "water"})
    assert wrong.status_code == 422 and "kind" in wrong.text
    state.close()
    store.close()


# --- counts that count occurrences -----------------------------------------------------


def _cover_events(first: int, n: int, meter: str = "E1") -> list[MeterPoint]:
    """`n` cover_open events a minute apart from minute `first`."""
    return [
        MeterPoint(meter, BASE_MS + (first + i) * 60_000, {"code": "cover_open"}) for i in range(n)
    ]


def _tamper_conditions(events: list[MeterPoint], as_of_ms: int) -> list[Condition]:
    """A meter's tamper finding through the rules and the decision, as a pass makes it."""
    findings = rules_elec.event_findings(events, RULES.elec.tamper, RULES.elec.hardware, as_of_ms)
    stamp = Stamp(format_ts(as_of_ms), "t")
    d = decide_meter("E1", "elec", findings, None, None, {"lot": "L1", "district": "D1"}, stamp)
    return conditions_of([d], as_of_ms)


def test_fifty_events_in_one_pass_count_fifty_and_once_across_passes(tmp_path: Path) -> None:
    b = book(tmp_path)
    events = _cover_events(0, 50)
    [opened] = b.observe(_tamper_conditions(events + events[:10], BASE_MS + DAY), BASE_MS + DAY)
    alert = opened.alert
    assert alert["count"] == 50  # the 10 delivered twice are the same events
    assert alert["first_seen"] == format_ts(BASE_MS)
    assert alert["last_seen"] == format_ts(BASE_MS + 49 * 60_000)
    assert "50 event(s)" in alert["message"]
    # The next pass finds the same 50 again (they stay findings for a year) and 2 new ones.
    later = events + _cover_events(100, 2)
    [again] = b.observe(_tamper_conditions(later, BASE_MS + 2 * DAY), BASE_MS + 2 * DAY)
    assert again.action == "repeated" and again.alert["count"] == 52
    assert again.alert["last_seen"] == format_ts(BASE_MS + 101 * 60_000)
    # The same pass repeated counts nothing new.
    [same] = b.observe(_tamper_conditions(later, BASE_MS + 2 * DAY), BASE_MS + 2 * DAY)
    assert same.alert["count"] == 52


def test_a_state_condition_counts_its_passes_each_as_of_once(tmp_path: Path) -> None:
    b = book(tmp_path)
    for day in (0, 1, 1, 2):  # the pass of day 1 run twice
        b.observe([condition(day=day)], BASE_MS + day * DAY)
    [alert] = b.list(None, None, None, 0, 10)
    assert alert["count"] == 3
    assert (alert["first_seen"], alert["last_seen"]) == (
        format_ts(BASE_MS),
        format_ts(BASE_MS + 2 * DAY),
    )


def test_one_condition_per_event_is_one_alert_counting_each(tmp_path: Path) -> None:
    # taxi.seal.event gives one finding per event: one alert, one count per distinct event.
    def seal(ts: int) -> Condition:
        return Condition(
            "taxi.seal.event",
            "taxi",
            "T1",
            "critical",
            "seal",
            BASE_MS + DAY,
            {},
            meter="T1",
            occurrences=((f"seal_broken@{ts}", ts),),
        )

    changes = book(tmp_path).observe(
        [seal(BASE_MS), seal(BASE_MS + 5), seal(BASE_MS)], BASE_MS + DAY
    )
    assert len(changes) == 1 and changes[0].alert["count"] == 2


def test_a_resolved_event_alert_reopens_only_on_a_new_event(tmp_path: Path) -> None:
    b = book(tmp_path)
    events = _cover_events(0, 3)
    [opened] = b.observe(_tamper_conditions(events, BASE_MS + DAY), BASE_MS + DAY)
    b.act(opened.alert["id"], "resolve", "inspector.li", "case closed", BASE_MS + DAY)
    [still] = b.observe(_tamper_conditions(events, BASE_MS + 2 * DAY), BASE_MS + 2 * DAY)
    assert still.action == "repeated" and still.alert["status"] == "resolved"
    more = events + _cover_events(2000, 1)
    [back] = b.observe(_tamper_conditions(more, BASE_MS + 3 * DAY), BASE_MS + 3 * DAY)
    assert back.action == "reopened" and back.alert["count"] == 4


def test_an_alert_counted_by_passes_before_is_recounted_by_its_events(tmp_path: Path) -> None:
    # Stored by the version that counted passes: 7 passes over 50 events, resolved.
    b = book(tmp_path)
    events = _cover_events(0, 50)
    b.observe(_tamper_conditions(events, BASE_MS + DAY), BASE_MS + DAY)
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("DELETE FROM alert_occurrences")
    db.execute(
        "UPDATE alerts SET count = 7, first_seen = ?, last_seen = ?, status = 'resolved'",
        (BASE_MS + DAY, BASE_MS + 7 * DAY),
    )
    db.commit()
    db.close()
    [recounted] = b.observe(_tamper_conditions(events, BASE_MS + 8 * DAY), BASE_MS + 8 * DAY)
    alert = recounted.alert
    assert alert["count"] == 50 and alert["first_seen"] == format_ts(BASE_MS)
    assert alert["status"] == "resolved"  # old events found again do not reopen it
