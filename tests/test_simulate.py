"""The simulated fleet: determinism, physics against ground truth, delivery, payloads."""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path
from statistics import median
from typing import Any

import pytest

from monitor.core.clock import parse_ts
from monitor.simulate import Fleet, FleetSpec, SimMessage, run_paced, write_registry_csv
from monitor.taxi.tariff import SHANGHAI_2022, TariffBook, charged_fare_cny

START = 1_772_294_400_000  # 2026-03-01T00:00:00+08:00
HOUR = 3_600_000
DAY = 24 * HOUR
SPAN = 3 * DAY
COLUMNS = (  # docs/registry.md, in order
    "meter_id",
    "kind",
    "role",
    "district",
    "lot",
    "manufacturer",
    "model",
    "accuracy_class",
    "installed_on",
    "verified_on",
    "period_years",
    "plate",
    "region",
    "feeder_branch",
    "feeder_distance_m",
)
REQUIRED = {  # docs/mqtt.md, the bold fields
    ("elec", "reading"): {"ts", "energy_kwh"},
    ("elec", "event"): {"ts", "code"},
    ("taxi", "trip"): {"trip_id", "start_ts", "end_ts", "meter_km", "fare_cny", "tariff_version"},
    ("taxi", "status"): {"ts", "seal", "tariff_version"},
    ("taxi", "event"): {"ts", "code"},
}
NON_NEGATIVE = {
    "energy_kwh",
    "reverse_kwh",
    "voltage_v",
    "current_a",
    "meter_km",
    "fare_cny",
    "gps_km",
    "wait_s",
    "empty_km",
    "pulses_per_km",
}
ELEC_CODES = {
    "cover_open",
    "terminal_cover_open",
    "magnetic_interference",
    "reverse_energy",
    "clock_battery_low",
    "clock_error",
    "power_down",
    "relay_fault",
    "self_check_fail",
    "overvoltage",
    "undervoltage",
}
TAXI_CODES = {
    "seal_broken",
    "param_changed",
    "power_loss",
    "tariff_applied",
    "self_check_fail",
    "sensor_fault",
}


def quiet(**changes: Any) -> FleetSpec:
    """A spec with perfect delivery: nothing lost, repeated or late."""
    base: dict[str, Any] = {"start_ms": START, "missing_rate": 0.0}
    base |= {"duplicate_rate": 0.0, "disorder_rate": 0.0}
    return FleetSpec(**(base | changes))


def ts_ms(value: object) -> int:
    """Epoch ms from either ts format of docs/mqtt.md (and nothing else)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    assert isinstance(value, str), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() is not None, value
    return int(moment.timestamp() * 1000)


def route(message: SimMessage) -> tuple[str, str, str]:
    """(kind, meter, channel) from a topic."""
    parts = message.topic.split("/")
    return parts[1], parts[-2], parts[-1]


def payload(message: SimMessage) -> dict[str, Any]:
    """The decoded JSON payload."""
    decoded = json.loads(message.payload)
    assert isinstance(decoded, dict)
    return decoded


def registers(messages: list[SimMessage]) -> dict[str, dict[int, dict[str, Any]]]:
    """meter → ts → reading, duplicates collapsed."""
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for message in messages:
        _, meter, channel = route(message)
        if channel == "reading":
            body = payload(message)
            out[meter][ts_ms(body["ts"])] = body
    return out


def of(
    messages: list[SimMessage], channel: str, kind: str = "taxi"
) -> list[tuple[str, dict[str, Any]]]:
    """(meter, payload) of every message on one channel."""
    return [
        (route(m)[1], payload(m))
        for m in messages
        if route(m)[0] == kind and route(m)[2] == channel
    ]


@pytest.fixture(scope="module")
def clean() -> tuple[Fleet, list[SimMessage]]:
    """Three days of a default fleet with perfect delivery."""
    fleet = Fleet(quiet())
    return fleet, list(fleet.messages(START, START + SPAN))


@pytest.fixture(scope="module")
def clean_regs(clean: tuple[Fleet, list[SimMessage]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The clean run's readings, by meter and time."""
    return registers(clean[1])


@pytest.fixture(scope="module")
def noisy() -> tuple[Fleet, list[SimMessage]]:
    """The same fleet and days with the default delivery defects."""
    fleet = Fleet(FleetSpec(start_ms=START))
    return fleet, list(fleet.messages(START, START + SPAN))


# --- determinism and continuation -------------------------------------------------------


def test_same_seed_same_messages() -> None:
    first = list(Fleet(FleetSpec(start_ms=START)).messages(START, START + DAY))
    second = list(Fleet(FleetSpec(start_ms=START)).messages(START, START + DAY))
    other = list(Fleet(FleetSpec(start_ms=START, seed=2)).messages(START, START + DAY))
    assert first == second
    assert first != other
    assert Fleet(FleetSpec(start_ms=START)).truth() == Fleet(FleetSpec(start_ms=START)).truth()


def test_consecutive_calls_continue_the_stream() -> None:
    whole = list(Fleet(FleetSpec(start_ms=START)).messages(START, START + 2 * DAY))
    fleet = Fleet(FleetSpec(start_ms=START))
    cut = START + DAY + 7 * 60_000 + 123  # not on the interval grid
    parts = list(fleet.messages(START, cut)) + list(fleet.messages(cut, START + 2 * DAY))
    assert parts == whole
    with pytest.raises(ValueError, match="before"):
        fleet.messages(START, START + 3 * DAY)


def test_a_later_start_skips_but_simulates_the_gap() -> None:
    split = Fleet(FleetSpec(start_ms=START))
    list(split.messages(START, START + DAY))
    second_day = list(split.messages(START + DAY, START + 2 * DAY))
    skipped = list(Fleet(FleetSpec(start_ms=START)).messages(START + DAY, START + 2 * DAY))
    assert skipped == second_day


def test_messages_come_on_the_interval_grid_from_the_first_boundary() -> None:
    fleet = Fleet(quiet(start_ms=START + 100_000))
    readings = registers(list(fleet.messages(START + 100_000, START + HOUR)))
    times = {t for by_ts in readings.values() for t in by_ts}
    assert times == {START + 900_000 * i for i in range(1, 4)}


# --- electricity physics ----------------------------------------------------------------


def test_registers_never_decrease(noisy: tuple[Fleet, list[SimMessage]]) -> None:
    _, messages = noisy
    for meter, by_ts in registers(messages).items():
        values = [by_ts[t]["energy_kwh"] for t in sorted(by_ts)]
        assert values == sorted(values), meter


def test_customer_register_counts_its_error_times_true_energy(
    clean: tuple[Fleet, list[SimMessage]], clean_regs: dict[str, dict[int, dict[str, Any]]]
) -> None:
    fleet, regs = clean[0], clean_regs
    truth = fleet.truth()
    resolution = fleet.spec.register_resolution_kwh
    customers = [m for m, t in truth.items() if t["kind"] == "elec" and t["role"] == "customer"]
    chosen = [m for m in customers if truth[m]["faults"] == ["beyond_limit"] or truth[m]["vacant"]]
    chosen += [m for m in customers if not truth[m]["faults"]][:8]
    a, b = START + DAY, START + 2 * DAY
    for meter in chosen:
        registered = regs[meter][b]["energy_kwh"] - regs[meter][a]["energy_kwh"]
        error = float(truth[meter]["error_pct"]) / 100
        expected = (1 + error) * fleet.true_energy_kwh(meter, a, b)
        assert abs(registered - expected) < resolution + 1e-6, meter


def test_master_meter_balance_holds_without_noise(
    clean: tuple[Fleet, list[SimMessage]], clean_regs: dict[str, dict[int, dict[str, Any]]]
) -> None:
    fleet, regs = clean[0], clean_regs
    truth = fleet.truth()
    resolution, hours = fleet.spec.register_resolution_kwh, fleet.spec.interval_s / 3600
    master = truth["M01"]
    customers = [
        m for m, t in truth.items() if t.get("district") == "D01" and t["role"] == "customer"
    ]
    fixed, gamma = float(master["fixed_loss_kw"]), float(master["gamma_per_kw"])
    for t in range(START + 19 * HOUR, START + 21 * HOUR, 900_000):  # the evening peak
        consumed = sum(fleet.true_energy_kwh(c, t, t + 900_000) for c in customers)
        inflow = consumed + fixed * hours + gamma * consumed**2 / hours
        assert fleet.true_energy_kwh("M01", t, t + 900_000) == pytest.approx(inflow, rel=1e-12)
        registered = regs["M01"][t + 900_000]["energy_kwh"] - regs["M01"][t]["energy_kwh"]
        error = float(master["error_pct"]) / 100
        assert abs(registered - (1 + error) * inflow) < resolution + 1e-6
        assert 0 < (inflow - consumed) / inflow < 0.1  # line loss of a few percent


def test_errors_and_loads_are_as_planted(
    clean: tuple[Fleet, list[SimMessage]], clean_regs: dict[str, dict[int, dict[str, Any]]]
) -> None:
    fleet, regs = clean[0], clean_regs
    truth = fleet.truth()
    customers = {m: t for m, t in truth.items() if t["kind"] == "elec" and t["role"] == "customer"}
    for meter, t in customers.items():
        error = abs(float(t["error_pct"]))
        assert (error > 3.5) == ("beyond_limit" in t["faults"]), meter
        mean_amps = sum(r["current_a"] for r in regs[meter].values()) / len(regs[meter])
        assert (mean_amps < 0.5) == t["vacant"], meter  # vacant: below 0.1 Ib (Ib = 5 A)
    assert sum(bool(t["vacant"]) for t in customers.values()) >= 1
    assert sum("beyond_limit" in t["faults"] for t in customers.values()) >= 2


def test_planted_electricity_faults_show(
    clean: tuple[Fleet, list[SimMessage]], clean_regs: dict[str, dict[int, dict[str, Any]]]
) -> None:
    (fleet, messages), regs = clean, clean_regs
    truth = fleet.truth()
    by_fault = {f: m for m, t in truth.items() for f in t["faults"]}
    stopped = by_fault["stopped"]
    since = truth[stopped]["fault_ms"]["stopped"]
    after = [r for t, r in sorted(regs[stopped].items()) if t >= since]
    assert len({r["energy_kwh"] for r in after}) == 1
    assert sum(r["current_a"] > 0.1 for r in after) > len(after) / 2
    clock = by_fault["clock"]
    assert max(abs(r["clock_offset_s"]) for r in regs[clock].values()) > 300
    others = [r for m, by_ts in regs.items() if m != clock for r in by_ts.values()]
    assert max(abs(r["clock_offset_s"]) for r in others) < 300
    events = {(m, p["code"]) for m, p in of(messages, "event", "elec")}
    assert {(by_fault["tamper"], "cover_open"), (clock, "clock_battery_low")} <= events


# --- delivery ---------------------------------------------------------------------------


def test_delivery_rates_are_near_the_spec(
    clean: tuple[Fleet, list[SimMessage]], noisy: tuple[Fleet, list[SimMessage]]
) -> None:
    _, sent = clean  # the same seed produces the same messages; only delivery differs
    _, received = noisy
    spec = noisy[0].spec
    settled = [m for m in sent if m.event_ms < START + SPAN - 6 * spec.interval_ms]
    counts = Counter((m.topic, m.payload) for m in received)
    periodic = [m for m in settled if route(m)[2] in ("reading", "status")]
    reliable = [m for m in settled if route(m)[2] not in ("reading", "status")]
    missing = sum((m.topic, m.payload) not in counts for m in periodic) / len(periodic)
    assert all((m.topic, m.payload) in counts for m in reliable)
    duplicated = sum(c - 1 for c in counts.values()) / len(counts)
    late, newest = 0, 0
    for m in received:
        late += m.event_ms < newest - spec.interval_ms // 2
        newest = max(newest, m.event_ms)
    assert missing == pytest.approx(spec.missing_rate, rel=0.25)
    assert duplicated == pytest.approx(spec.duplicate_rate, rel=0.3)
    assert late / len(received) == pytest.approx(spec.disorder_rate, rel=0.25)


def test_delivery_counts_say_what_was_never_sent(clean: tuple[Fleet, list[SimMessage]]) -> None:
    _, sent = clean  # no delivery defects: every message made
    fleet = Fleet(FleetSpec(start_ms=START, duplicate_rate=0, disorder_rate=0, missing_rate=0.05))
    received = list(fleet.messages(START, START + SPAN))
    counts = fleet.delivery_counts
    assert counts.produced == len(sent)
    assert counts.withheld == len(sent) - len(received) > 0
    assert counts.duplicated == counts.delayed == 0


# --- payloads ---------------------------------------------------------------------------


def test_every_payload_follows_the_contract(noisy: tuple[Fleet, list[SimMessage]]) -> None:
    fleet, messages = noisy
    formats: dict[str, set[type]] = defaultdict(set)
    for message in messages:
        parts = message.topic.split("/")
        assert parts[0] == fleet.spec.topic_root
        assert len(parts) == (5 if parts[1] == "elec" else 4)
        kind, _, channel = route(message)
        body = payload(message)
        assert REQUIRED[kind, channel] <= body.keys(), message
        for key in ("ts", "start_ts", "end_ts"):
            if key in body:
                assert abs(ts_ms(body[key]) - message.event_ms) <= DAY
                formats[channel].add(type(body[key]))
        if channel == "event":
            assert body["code"] in (ELEC_CODES if kind == "elec" else TAXI_CODES)
        if channel == "status":
            assert body["seal"] in ("intact", "broken")
        if channel == "trip":
            assert ts_ms(body["end_ts"]) == message.event_ms >= ts_ms(body["start_ts"])
        for key in NON_NEGATIVE & body.keys():
            assert isinstance(body[key], int | float) and body[key] >= 0, (key, body)
    for channel in ("reading", "status", "trip"):
        assert formats[channel] == {int, str}, channel


def test_reading_topic_matches_the_meter_district(clean: tuple[Fleet, list[SimMessage]]) -> None:
    fleet, messages = clean
    truth = fleet.truth()
    for message in messages:
        parts = message.topic.split("/")
        if parts[1] == "elec":
            assert truth[parts[3]]["district"] == parts[2]


# --- taxis ------------------------------------------------------------------------------


def test_trips_are_realistic(clean: tuple[Fleet, list[SimMessage]]) -> None:
    fleet, messages = clean
    trips = of(messages, "trip")
    per_taxi_day = len(trips) / fleet.spec.taxis / 3
    assert 13 <= per_taxi_day <= 26
    km = [p["gps_km"] for _, p in trips]
    assert 5.5 < median(km) < 9.0
    assert 0.03 < sum(k < 3 for k in km) / len(km) < 0.2
    assert len({p["trip_id"] for _, p in trips}) == len(trips)
    ends = [ts_ms(p["end_ts"]) for _, p in trips]
    nights = sum(not 5 <= datetime.fromtimestamp(e / 1000, fleet.spec.tz).hour < 23 for e in ends)
    assert nights > 0  # the night tariff gets exercised


def test_fares_follow_the_tariff_except_for_the_overcharger(
    clean: tuple[Fleet, list[SimMessage]],
) -> None:
    fleet, messages = clean
    truth = fleet.truth()
    checked: Counter[bool] = Counter()
    for meter, p in of(messages, "trip"):
        end = datetime.fromisoformat(p["end_ts"]) if isinstance(p["end_ts"], str) else None
        end = end or datetime.fromtimestamp(p["end_ts"] / 1000, fleet.spec.tz)
        tariff = fleet.tariffs[p["tariff_version"]]
        expected = charged_fare_cny(tariff, p["meter_km"], p["wait_s"], end)
        overcharger = "overcharge" in truth[meter]["faults"]
        assert (p["fare_cny"] != expected) == overcharger, (meter, p)
        if overcharger:
            assert p["fare_cny"] > expected
        checked[overcharger] += 1
    assert checked[True] > 10 and checked[False] > 500


def test_distance_faults_show_in_the_gnss_ratio(clean: tuple[Fleet, list[SimMessage]]) -> None:
    fleet, messages = clean
    truth = fleet.truth()
    ratios: dict[str, list[float]] = defaultdict(list)
    for meter, p in of(messages, "trip"):
        if p["gps_km"] >= 3:
            ratios[meter].append(p["meter_km"] / p["gps_km"])
    fleet_median = median(r for rs in ratios.values() for r in rs)
    for meter, rs in ratios.items():
        t = truth[meter]
        gross = sum(r >= 1.3 for r in rs) / len(rs)
        if t["pulse_injector"]:
            assert 0.05 < gross < 0.45
            continue
        assert gross == 0, meter
        shift = median(rs) / fleet_median - 1
        planted = float(t["inflation_pct"]) / 100
        assert abs(shift - planted) < 0.012, meter


def test_seal_break_shows_in_event_and_heartbeats(clean: tuple[Fleet, list[SimMessage]]) -> None:
    fleet, messages = clean
    truth = fleet.truth()
    broken = {m: t["seal_break_ms"] for m, t in truth.items() if t.get("seal_break_ms")}
    assert len(broken) == 1
    for meter, p in of(messages, "status"):
        since = broken.get(meter)
        expected = "broken" if since is not None and ts_ms(p["ts"]) >= since else "intact"
        assert p["seal"] == expected
    events = [(m, ts_ms(p["ts"])) for m, p in of(messages, "event") if p["code"] == "seal_broken"]
    assert events == list(broken.items())


def test_stale_meter_keeps_the_old_tariff() -> None:
    new = {**SHANGHAI_2022, "effective_from": "2026-03-02T00:00:00+08:00"}
    new["day"] = {**SHANGHAI_2022["day"], "flag_fall": 16.0}
    book = TariffBook.from_bodies({"SH-2022": SHANGHAI_2022, "SH-2026": new})
    fleet = Fleet(quiet(), tariffs=book)
    stale = next(m for m, t in fleet.truth().items() if t.get("stale_tariff"))
    messages = list(fleet.messages(START, START + 2 * DAY))
    for meter, p in of(messages, "status"):
        after = ts_ms(p["ts"]) >= START + DAY
        assert p["tariff_version"] == ("SH-2026" if after and meter != stale else "SH-2022")
    for meter, p in of(messages, "trip"):
        after = ts_ms(p["end_ts"]) >= START + DAY
        assert p["tariff_version"] == ("SH-2026" if after and meter != stale else "SH-2022")


def test_pushed_tariff_is_applied_and_acknowledged_except_by_the_stale_meter() -> None:
    fleet = Fleet(quiet())
    stale = next(m for m, t in fleet.truth().items() if t.get("stale_tariff"))
    first = list(fleet.messages(START, START + DAY))
    new = {**SHANGHAI_2022, "effective_from": "2026-03-02T12:00:00+08:00"}
    fleet.push_tariff("SH-2026", TariffBook.from_bodies({"v": new})["v"], START + DAY)
    second = list(fleet.messages(START + DAY, START + 2 * DAY))
    assert not [p for _, p in of(first, "event") if p["code"] == "tariff_applied"]
    acks = {m: p for m, p in of(second, "event") if p["code"] == "tariff_applied"}
    assert set(acks) == {f"T{j + 1:03d}" for j in range(fleet.spec.taxis)} - {stale}
    assert {p["detail"] for p in acks.values()} == {"SH-2026"}
    assert "SH-2026" in fleet.tariffs
    late = [(m, p) for m, p in of(second, "status") if ts_ms(p["ts"]) >= START + DAY + 12 * HOUR]
    assert {p["tariff_version"] for m, p in late if m != stale} == {"SH-2026"}
    assert {p["tariff_version"] for m, p in late if m == stale} == {"SH-2022"}


# --- registry ---------------------------------------------------------------------------


def test_registry_rows_have_exactly_the_contract_columns(
    clean: tuple[Fleet, list[SimMessage]], tmp_path: Path
) -> None:
    fleet, messages = clean
    rows = fleet.registry_rows()
    assert all(tuple(row) == COLUMNS for row in rows)
    ids = [row["meter_id"] for row in rows]
    assert len(set(ids)) == len(ids) and set(ids) == set(fleet.truth())
    assert {route(m)[1] for m in messages} <= set(ids)
    for row in rows:
        assert date.fromisoformat(row["verified_on"]) <= date(2026, 3, 1)
        assert row["lot"].startswith(("WS", "LY", "HL", "SX", "JY", "TJ"))
        if row["kind"] == "elec":
            assert row["role"] in ("customer", "master") and row["district"] and not row["plate"]
            expected = ("2", "8") if row["role"] == "customer" else ("0.5S", "6")
            assert (row["accuracy_class"], row["period_years"]) == expected
        else:
            assert row["plate"] and not row["role"] and not row["district"]
            assert row["period_years"] == "1"
    lots = Counter(row["lot"] for row in rows)
    assert all(count >= 2 for count in lots.values())
    path = tmp_path / "registry.csv"
    write_registry_csv(rows, path)
    with path.open(encoding="utf-8", newline="") as handle:
        assert list(csv.DictReader(handle)) == rows


def test_spec_refuses_what_it_cannot_simulate() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        FleetSpec(start_ms=START, interval_s=7)
    with pytest.raises(ValueError, match="missing_rate"):
        FleetSpec(start_ms=START, missing_rate=1.5)
    with pytest.raises(ValueError, match="meters_per_district"):
        FleetSpec(start_ms=START, meters_per_district=(5, 2))


def test_small_fleets_leave_out_faults_that_do_not_fit() -> None:
    fleet = Fleet(FleetSpec(start_ms=START, districts=1, meters_per_district=(3, 3), taxis=2))
    faults = [f for t in fleet.truth().values() for f in t["faults"]]
    assert len([f for f in faults if f.startswith("inflated")]) == 2
    assert len(list(fleet.messages(START, START + HOUR))) > 0


# --- pacing -----------------------------------------------------------------------------


class FakeClock:
    """A wall clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_run_paced_publishes_each_message_once_its_time_has_come() -> None:
    clock, speed, backfill = FakeClock(), 600.0, 2 * HOUR
    end = START + 6 * HOUR
    published: list[tuple[float, str, bytes]] = []

    def publish(topic: str, body: bytes) -> None:
        published.append((START + backfill + clock.now * speed * 1000, topic, body))

    fleet = Fleet(FleetSpec(start_ms=START))
    count = run_paced(
        fleet, publish, START, speed, threading.Event(), end, backfill, clock, clock.sleep
    )
    expected = list(Fleet(FleetSpec(start_ms=START)).messages(START, end))
    assert count == len(published) == len(expected)
    assert [(t, b) for _, t, b in published] == [(m.topic, m.payload) for m in expected]
    for (sim_now, _, _), message in zip(published, expected, strict=True):
        assert sim_now >= message.event_ms
    # Everything up to the first live message is history: out at once, without waiting.
    live = next(i for i, m in enumerate(expected) if m.event_ms >= START + backfill)
    assert live > 100
    assert all(sim_now == START + backfill for sim_now, _, _ in published[:live])


def test_run_paced_never_runs_ahead_of_now() -> None:
    """Caught up with the present, a fleet publishes in real time: nothing is future-dated."""
    clock, speed = FakeClock(), 3600.0
    present_s = (START + 2 * HOUR) / 1000  # two simulated hours to catch up, then real time
    sent: list[tuple[float, int]] = []  # (now, the message's ts), epoch ms

    def now_s() -> float:
        return present_s + clock.now

    def publish(topic: str, body: bytes) -> None:
        sent.append((now_s() * 1000, parse_ts(json.loads(body)["ts"])))

    fleet = Fleet(FleetSpec(start_ms=START, districts=1, meters_per_district=(2, 2), taxis=0))
    end = START + 4 * HOUR
    count = run_paced(
        fleet, publish, START, speed, threading.Event(), end, 0, clock, clock.sleep, now_s
    )
    assert count == len(sent) > 0
    assert all(now_ms >= ts_ms for now_ms, ts_ms in sent)
    # The first two hours went out at 3600x (two wall seconds), the rest in real time:
    # the last reading (at the last quarter hour before `end`) waited for its own time.
    assert 2 * 3600 - 15 * 60 <= clock.now < 2 * 3600
    assert sent[-1][0] - sent[-1][1] < 1000


def test_run_paced_stops_when_told() -> None:
    clock, stop = FakeClock(), threading.Event()
    published: list[str] = []

    def publish(topic: str, body: bytes) -> None:
        published.append(topic)
        if len(published) == 10:
            stop.set()

    fleet = Fleet(FleetSpec(start_ms=START))
    count = run_paced(fleet, publish, START, 60.0, stop, None, 0, clock, clock.sleep)
    assert count == len(published) == 10
