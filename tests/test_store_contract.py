"""One contract for every telemetry store: the same tests over the embedded and InfluxDB stores.

Each test takes `store` (a `TelemetryStore`, parametrised over the implementations) and
calls `store.flush()` before reading, which a store that writes through a buffer needs
and the embedded store answers at once. A new backend joins by adding a case to
`store`; it passes when it answers exactly what the others do.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from monitor.core.ports import TelemetryStore
from monitor.core.schema import ELEC_EVENT, ELEC_READING, TAXI_STATUS, TAXI_TRIP, Record
from monitor.platform.config import InfluxSettings
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.influx import InfluxStore
from tests.helpers import BASE_MS
from tests.services import InfluxStack

STEP = 900_000
FIELDS = ["energy_kwh", "current_a"]


@pytest.fixture(params=["embedded", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TelemetryStore]:
    if request.param == "embedded":
        opened: TelemetryStore = EmbeddedStore(tmp_path / "telemetry.sqlite", Metrics())
    else:
        stack: InfluxStack = request.getfixturevalue("influxdb")
        settings = InfluxSettings(
            url=stack.url, token=stack.token, org=stack.org, bucket=stack.bucket, retry_max_s=0.5
        )
        opened = InfluxStore(settings, tmp_path / "spool", Metrics())
    yield opened
    opened.close()


def elec(meter: str, i: int, district: str = "TA1", **values: float) -> Record:
    return Record(ELEC_READING, meter, district, BASE_MS + i * STEP, dict(values))


def settle(store: TelemetryStore) -> None:
    assert store.flush(20.0), f"{store.backend}: written points not visible within 20 s"


def test_a_duplicate_overwrites_and_late_points_land_in_time_order(store: TelemetryStore) -> None:
    store.write([elec("M1", 2, energy_kwh=2.0), elec("M1", 0, energy_kwh=0.0)])
    store.write([elec("M1", 1, energy_kwh=1.0), elec("M1", 2, energy_kwh=2.5)])
    settle(store)
    got = store.history(ELEC_READING, "M1", ["energy_kwh"], None, None, 100)
    assert [p.ts_ms for p in got] == [BASE_MS, BASE_MS + STEP, BASE_MS + 2 * STEP]
    assert [p.values["energy_kwh"] for p in got] == [0.0, 1.0, 2.5]


def test_history_is_a_half_open_window_with_a_limit(store: TelemetryStore) -> None:
    store.write([elec("M1", i, energy_kwh=float(i)) for i in range(6)])
    settle(store)
    got = store.history(ELEC_READING, "M1", ["energy_kwh"], BASE_MS + STEP, BASE_MS + 4 * STEP, 100)
    assert [p.values["energy_kwh"] for p in got] == [1.0, 2.0, 3.0]
    limited = store.history(ELEC_READING, "M1", ["energy_kwh"], None, None, 2)
    assert [p.values["energy_kwh"] for p in limited] == [0.0, 1.0]


def test_latest_is_the_newest_by_event_time_not_by_arrival(store: TelemetryStore) -> None:
    store.write([elec("M1", 5, energy_kwh=5.0)])
    store.write([elec("M1", 3, energy_kwh=3.0)])  # late: arrives after the newer one
    settle(store)
    latest = store.latest(ELEC_READING, "M1")
    assert latest is not None
    assert (latest.ts_ms, latest.values["energy_kwh"]) == (BASE_MS + 5 * STEP, 5.0)
    assert store.latest(ELEC_READING, "nobody") is None


def test_series_by_district_in_a_closed_window(store: TelemetryStore) -> None:
    store.write(
        [
            elec("M2", 1, energy_kwh=1.0, current_a=2.0),
            elec("M1", 3, energy_kwh=3.0),
            elec("M1", 1, energy_kwh=1.0),
            elec("M1", 4, energy_kwh=4.0),  # after the window
            elec("M1", 0, energy_kwh=0.5),  # before it
            elec("M3", 2, district="TB2", energy_kwh=7.0),
        ]
    )
    settle(store)
    got = store.series(ELEC_READING, FIELDS, BASE_MS + STEP, BASE_MS + 3 * STEP, district="TA1")
    assert list(got) == ["M1", "M2"]
    assert got["M1"].ts_ms.tolist() == [BASE_MS + STEP, BASE_MS + 3 * STEP]
    assert got["M1"].values["energy_kwh"].tolist() == [1.0, 3.0]
    assert got["M1"].column("current_a") is None
    assert got["M2"].values["current_a"].tolist() == [2.0]
    every = store.series(ELEC_READING, FIELDS, BASE_MS, BASE_MS + 4 * STEP)
    assert list(every) == ["M1", "M2", "M3"]
    assert store.series(ELEC_READING, FIELDS, BASE_MS, BASE_MS + 4 * STEP, district="none") == {}


def test_columns_carry_text_and_numbers_with_absent_values(store: TelemetryStore) -> None:
    def status(meter: str, i: int, **values: float | str) -> Record:
        return Record(TAXI_STATUS, meter, "", BASE_MS + i * 300_000, dict(values))

    store.write(
        [
            status("T2", 3, seal="intact", pulses_per_km=1000.0, tariff_version="A"),
            status("T1", 2, seal="broken", tariff_version="A"),
            status("T1", 1, seal="intact", pulses_per_km=1000.0, tariff_version="A"),
            status("T1", 9, seal="intact"),  # outside the window
        ]
    )
    settle(store)
    fields = ["seal", "pulses_per_km", "tariff_version"]
    window = (BASE_MS + 300_000, BASE_MS + 4 * 300_000)
    every = store.columns(TAXI_STATUS, fields, *window)
    assert list(every) == ["T1", "T2"]
    t1 = every["T1"]
    assert t1.ts_ms.tolist() == [BASE_MS + 300_000, BASE_MS + 600_000]
    assert t1.values["seal"].tolist() == ["intact", "broken"]
    assert t1.values["tariff_version"].tolist() == ["A", "A"]
    ppk = t1.values["pulses_per_km"].tolist()
    assert ppk[0] == 1000.0 and math.isnan(ppk[1])
    assert list(store.columns(TAXI_STATUS, fields, *window, meter="T2")) == ["T2"]


def test_points_of_events_and_trips_by_time(store: TelemetryStore) -> None:
    store.write(
        [
            Record(ELEC_EVENT, "M1", "TA1", BASE_MS + 2 * STEP, {"code": "cover_open"}),
            Record(ELEC_EVENT, "M2", "TA1", BASE_MS + STEP, {"code": "power_down"}),
            Record(ELEC_EVENT, "M2", "TA1", BASE_MS + STEP, {"code": "power_down"}),  # duplicate
            Record(ELEC_EVENT, "M1", "TA1", BASE_MS + 9 * STEP, {"code": "clock_error"}),
            Record(
                TAXI_TRIP,
                "T1",
                "",
                BASE_MS + STEP,
                {"trip_id": "t-1", "meter_km": 5.0, "fare_cny": 20.0, "tariff_version": "A"},
            ),
        ]
    )
    settle(store)
    events = store.points(ELEC_EVENT, BASE_MS, BASE_MS + 3 * STEP)
    assert [(p.meter, p.ts_ms, p.values["code"]) for p in events] == [
        ("M2", BASE_MS + STEP, "power_down"),
        ("M1", BASE_MS + 2 * STEP, "cover_open"),
    ]
    [trip] = store.points(TAXI_TRIP, BASE_MS, BASE_MS + 3 * STEP)
    assert (trip.meter, trip.values["trip_id"], trip.values["meter_km"]) == ("T1", "t-1", 5.0)


def test_health_says_writable(store: TelemetryStore) -> None:
    health = store.health()
    assert health.writable and health.backend == store.backend
    assert health.dropped_points == 0


# Writes in any order, with duplicates and overwrites, read back as the last value written
# per (meter, ts): the reference is a dict.
_writes = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.integers(0, 40),
        st.floats(0, 1e6, allow_nan=False).map(lambda x: round(x, 3)),
    ),
    min_size=1,
    max_size=30,
)


@hsettings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(_writes, min_size=1, max_size=3),
    window=st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_series_equals_the_last_write_per_point(
    store: TelemetryStore, batches: list[list[tuple[str, int, float]]], window: tuple[int, int]
) -> None:
    # Every example writes under its own district, so examples sharing one store never meet.
    district = f"P{uuid.uuid4().hex[:12]}"
    expected: dict[str, dict[int, float]] = {}
    for batch in batches:
        store.write([elec(f"{district}-{m}", i, district, energy_kwh=v) for m, i, v in batch])
        for m, i, v in batch:
            expected.setdefault(f"{district}-{m}", {})[BASE_MS + i * STEP] = v
    settle(store)
    lo, hi = sorted(window)
    start, end = BASE_MS + lo * STEP, BASE_MS + hi * STEP
    got = store.series(ELEC_READING, ["energy_kwh"], start, end, district=district)
    want = {
        m: sorted((t, v) for t, v in pts.items() if start <= t <= end)
        for m, pts in sorted(expected.items())
    }
    want = {m: pts for m, pts in want.items() if pts}
    assert {
        m: list(zip(s.ts_ms.tolist(), s.values["energy_kwh"].tolist(), strict=True))
        for m, s in got.items()
    } == want
