"""Registry rows of the simulated fleet (docs/registry.md): lots, dates, and the CSV writer."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from monitor.core.registry import COLUMNS  # one definition of the registry columns
from monitor.simulate.spec import FleetSpec

# (manufacturer, model, lot code, age in years at the start of the simulation). The two
# oldest customer lots fall due within a year of the start, so lot evaluation has work.
_CUSTOMER_LOTS = (
    ("Wasion", "DDZY102-Z", "WS", 7.6),
    ("Linyang", "DDZY71-Z", "LY", 7.3),
    ("Holley", "DDZY285-Z", "HL", 4.5),
    ("Sanxing", "DDZY188-Z", "SX", 1.5),
)
_CUSTOMER_LOT_WEIGHTS = (0.3, 0.3, 0.25, 0.15)
_MASTER_LOT = ("Wasion", "DTZ341", "WS", 3.0)
_TAXI_LOTS = (("Jinyang", "JT-2000", "JY", 4.0), ("Tianjin Meter", "SD-7A", "TJ", 2.0))


@dataclass(frozen=True)
class Lot:
    """A delivery batch: same manufacturer, model, class, and delivery year."""

    lot_id: str
    manufacturer: str
    model: str
    accuracy_class: str
    period_years: int
    installed_on: date
    verified_on: date


def start_date(spec: FleetSpec) -> date:
    """The local calendar date of the simulation start."""
    return datetime.fromtimestamp(spec.start_ms // 1000, spec.tz).date()


def _lot(
    entry: tuple[str, str, str, float],
    klass: str,
    period: int,
    today: date,
    rng: np.random.Generator,
) -> Lot:
    manufacturer, model, code, age_years = entry
    installed = today - timedelta(days=int(age_years * 365.25 + rng.integers(-20, 21)))
    verified = installed - timedelta(days=int(rng.integers(30, 121)))
    batch = int(rng.integers(1, 4))
    return Lot(
        f"{code}-{model}-{installed.year}B{batch}",
        manufacturer,
        model,
        klass,
        period,
        installed,
        verified,
    )


def customer_lots(spec: FleetSpec, rng: np.random.Generator) -> tuple[list[Lot], tuple[float, ...]]:
    """The customer-meter lots (class 2, 8-year period) and their shares of the meters."""
    today = start_date(spec)
    return [_lot(e, "2", 8, today, rng) for e in _CUSTOMER_LOTS], _CUSTOMER_LOT_WEIGHTS


def master_lot(spec: FleetSpec, rng: np.random.Generator) -> Lot:
    """The master-meter lot: class 0.5S, 6-year period (JJG 596-2012)."""
    return _lot(_MASTER_LOT, "0.5S", 6, start_date(spec), rng)


def taxi_lots(spec: FleetSpec, rng: np.random.Generator) -> list[Lot]:
    """Taxi fare meter lots: 1-year verification period (JJG 517), no accuracy class."""
    today = start_date(spec)
    return [_lot(e, "", 1, today, rng) for e in _TAXI_LOTS]


def registry_row(
    meter_id: str,
    kind: str,
    lot: Lot,
    *,
    role: str = "",
    district: str = "",
    installed_on: date | None = None,
    verified_on: date | None = None,
    plate: str = "",
) -> dict[str, str]:
    """One CSV row with exactly the columns of docs/registry.md (empty string = not applicable)."""
    return {
        "meter_id": meter_id,
        "kind": kind,
        "role": role,
        "district": district,
        "lot": lot.lot_id,
        "manufacturer": lot.manufacturer,
        "model": lot.model,
        "accuracy_class": lot.accuracy_class,
        "installed_on": (installed_on or lot.installed_on).isoformat(),
        "verified_on": (verified_on or lot.verified_on).isoformat(),
        "period_years": str(lot.period_years),
        "plate": plate,
        "region": "",  # one region: the default
        "feeder_branch": "",  # the simulator's districts have no cable topology
        "feeder_distance_m": "",
    }


def write_registry_csv(rows: Iterable[Mapping[str, str]], path: str | os.PathLike[str]) -> None:
    """Write registry rows as UTF-8 CSV with the header of docs/registry.md."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
