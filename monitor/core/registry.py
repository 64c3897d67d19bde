"""The meter registry (docs/registry.md): rows, CSV parsing, due dates."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monitor.core.schema import ID_PATTERN

COLUMNS = (
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
REQUIRED_COLUMNS = ("meter_id", "kind")
DEFAULT_REGION = "default"
"""The region of a row that names none: one region for a registry without regions."""


class MeterRow(BaseModel):
    """One registry row; empty CSV cells are None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    meter_id: str = Field(pattern=ID_PATTERN.pattern)
    kind: Literal["elec", "taxi"]
    role: Literal["customer", "master"] | None = None
    district: str | None = Field(None, pattern=ID_PATTERN.pattern)
    lot: str | None = Field(None, min_length=1, max_length=128)
    manufacturer: str | None = None
    model: str | None = None
    accuracy_class: str | None = Field(None, pattern=r"^(0\.2S|0\.5S|0\.5|1|2|3|A|B|C|D)$")
    installed_on: date | None = None
    verified_on: date | None = None
    period_years: int | None = Field(None, ge=1, le=30)
    plate: str | None = None
    # Where the meter hangs on its transformer area's low-voltage feeder (optional): the
    # cable leaving the transformer's board, and the cable length from the transformer
    # to its connection point. The estimator's per-branch loss model uses them.
    feeder_branch: str | None = Field(None, min_length=1, max_length=128)
    feeder_distance_m: float | None = Field(None, ge=0, le=100_000)
    region: str | None = Field(None, pattern=ID_PATTERN.pattern)

    @model_validator(mode="after")
    def _kind_rules(self) -> MeterRow:
        if self.kind == "elec":
            if self.plate:
                raise ValueError("plate is for taxi meters only")
            if self.feeder_distance_m is not None and not self.feeder_branch:
                raise ValueError("feeder_distance_m needs the feeder_branch it is measured along")
            if not self.district:
                raise ValueError("an electricity meter needs its district (transformer area)")
        elif self.role is not None:
            raise ValueError("role is for electricity meters only")
        elif self.feeder_branch or self.feeder_distance_m is not None:
            raise ValueError("feeder_branch and feeder_distance_m are for electricity meters only")
        return self

    @property
    def effective_role(self) -> str | None:
        """Electricity meters are customers unless marked master."""
        return (self.role or "customer") if self.kind == "elec" else None

    @property
    def effective_region(self) -> str:
        """The row's region, or the default one."""
        return self.region or DEFAULT_REGION

    @property
    def due_on(self) -> date | None:
        """Current verification due date: last verification (or installation) + period."""
        start = self.verified_on or self.installed_on
        if start is None or self.period_years is None:
            return None
        return add_years(start, self.period_years)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row with the derived due date."""
        out = self.model_dump(mode="json")
        out["due_on"] = self.due_on.isoformat() if self.due_on else None
        return out


def add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


@dataclass(frozen=True)
class RowError:
    """Why one input row was refused; `line` counts the header as line 1."""

    line: int
    meter_id: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.meter_id or '?'}): {self.reason}"


@dataclass(frozen=True)
class ParsedRows:
    """Valid rows and the refused ones."""

    rows: list[MeterRow]
    errors: list[RowError]


def _clean(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, str):
            value = value.strip()
        out[key.strip() if isinstance(key, str) else key] = None if value == "" else value
    return out


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def parse_rows(items: Iterable[Mapping[str, Any]], first_line: int = 1) -> ParsedRows:
    """Validate dict rows; duplicates of a meter id in one input are refused."""
    rows: list[MeterRow] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    for offset, raw in enumerate(items):
        line = first_line + offset
        data = _clean(raw)
        meter_id = data.get("meter_id")
        try:
            row = MeterRow.model_validate(data)
        except ValidationError as exc:
            errors.append(RowError(line, str(meter_id) if meter_id else None, _explain(exc)))
            continue
        if row.meter_id in seen:
            errors.append(RowError(line, row.meter_id, "meter_id appears twice in this input"))
            continue
        seen.add(row.meter_id)
        rows.append(row)
    return ParsedRows(rows, errors)


def region_conflicts(existing: Iterable[MeterRow], incoming: Iterable[MeterRow]) -> list[str]:
    """Districts and lots that would span two regions once `incoming` replaces its rows.

    A district (transformer area) and a lot each belong to one region: the access
    scopes and the per-region reports rest on it. A row without a region is in the
    default one.
    """
    rows = {r.meter_id: r for r in existing}
    rows |= {r.meter_id: r for r in incoming}
    found: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows.values():
        for what, name in (("district", row.district), ("lot", row.lot)):
            if name:
                found.setdefault((what, name), {}).setdefault(row.effective_region, row.meter_id)
    return [
        f"{what} {name} would span regions "
        + ", ".join(f"{region} ({meter} …)" for region, meter in sorted(regions.items()))
        + ": give all its meters one region"
        for (what, name), regions in sorted(found.items())
        if len(regions) > 1
    ]


def parse_csv(text: str) -> ParsedRows:
    """Parse registry CSV (the columns of docs/registry.md; a subset is fine if it has meter_id and kind)."""
    # newline="": the csv module handles line ends itself (a bare \r inside a field
    # is data, not an error).
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if unknown or missing:
        reason = []
        if missing:
            reason.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            reason.append(f"unknown column(s) {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
        return ParsedRows([], [RowError(1, None, "; ".join(reason))])
    return parse_rows(reader, first_line=2)
