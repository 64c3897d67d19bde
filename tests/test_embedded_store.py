"""The embedded store: duplicates idempotent, out-of-order lands by event time."""

from __future__ import annotations

from pathlib import Path

from monitor.metrics import Metrics
from monitor.schema import ELEC_READING, TAXI_TRIP, Record
from monitor.store.embedded import EmbeddedStore


def reading(meter: str, ts: int, kwh: float) -> Record:
    return Record(ELEC_READING, meter, "TA1", ts, {"energy_kwh": kwh, "current_a": 1.0})


def test_duplicates_and_disorder(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    store.write([reading("M1", 3000, 3.0), reading("M1", 1000, 1.0)])
    store.write([reading("M1", 2000, 2.0), reading("M1", 1000, 1.0), reading("M2", 1000, 9.0)])
    points = store.history(ELEC_READING, "M1", ["energy_kwh"], None, None, 100)
    assert [(p.ts_ms, p.values["energy_kwh"]) for p in points] == [
        (1000, 1.0),
        (2000, 2.0),
        (3000, 3.0),
    ]
    latest = store.latest(ELEC_READING, "M1")
    assert latest is not None and latest.ts_ms == 3000 and latest.values["district"] == "TA1"
    window = store.history(ELEC_READING, "M1", ["energy_kwh"], 1500, 3000, 100)
    assert [p.ts_ms for p in window] == [2000]
    store.close()


def test_resent_trip_is_one_trip(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite", Metrics())
    trip = Record(
        TAXI_TRIP, "T1", "", 5000, {"trip_id": "x", "meter_km": 4.0, "tariff_version": "v"}
    )
    store.write([trip, trip])
    store.write([trip])
    assert len(store.history(TAXI_TRIP, "T1", ["meter_km"], None, None, 10)) == 1
    assert store.health().writable
    store.close()
