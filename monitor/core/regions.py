"""Regions: which region a meter, district or lot belongs to, from the registry.

A registry row may name its `region` (docs/registry.md); a row without one is in the
default region, so a registry without regions is one region. A district and a lot
belong to one region (the registry refuses rows that would split one,
`registry.region_conflicts`), so a subject's region is that of its meters. Access
scopes (a token limited to regions, districts or lots) and the per-region lists and
reports all ask this one index.

    index = RegionIndex.from_rows(state.registry_rows())
    index.of("district", "D01")  # → "east"
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from monitor.core.registry import DEFAULT_REGION, MeterRow

Subject = Literal["meter", "district", "lot"]


@dataclass(frozen=True)
class RegionIndex:
    """Meter, district and lot → region, and each region's districts, lots and meters."""

    meters: dict[str, str] = field(default_factory=dict)
    districts: dict[str, str] = field(default_factory=dict)
    lots: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[MeterRow]) -> RegionIndex:
        """The index of a registry."""
        meters: dict[str, str] = {}
        districts: dict[str, str] = {}
        lots: dict[str, str] = {}
        for row in rows:
            region = row.effective_region
            meters[row.meter_id] = region
            if row.district:
                districts.setdefault(row.district, region)
            if row.lot:
                lots.setdefault(row.lot, region)
        return cls(meters, districts, lots)

    def of(self, subject: Subject | str, name: str | None, district: str | None = None) -> str:
        """The region of a meter, district or lot; an unregistered meter is in the region
        of `district` (where it was heard), and anything unknown in the default region."""
        table = {"meter": self.meters, "district": self.districts, "lot": self.lots}.get(subject)
        found = table.get(name or "") if table is not None else None
        if found is None and district:
            found = self.districts.get(district)
        return found or DEFAULT_REGION

    def regions(self) -> list[str]:
        """Every region with a registered meter, by name (the default one if none)."""
        return sorted(set(self.meters.values())) or [DEFAULT_REGION]

    def in_region(
        self, region: str, meter: str | None, lot: str | None, district: str | None
    ) -> bool:
        """Whether something about this meter, lot or district (an alert, say) is in `region`."""
        if meter:
            return self.of("meter", meter, district) == region
        if lot:
            return self.of("lot", lot) == region
        return self.of("district", district) == region
