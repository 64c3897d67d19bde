"""What part of the fleet a caller sees: meters, districts, lots and alerts in its scope.

A scope names regions, districts and lots (or `*`). A meter is in scope when its
registered region, district or lot is named (an unregistered sender: the district it
sends under, or that district's region); a district when it or its region is named; a
lot when it, its region or one of its meters' districts is named; an alert when its
meter, lot or district is. Whatever is out of scope answers exactly as an unknown one would (404),
so a scope never tells what exists outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import HTTPException, Request

from monitor.core.ports import StateStore
from monitor.core.regions import RegionIndex
from monitor.platform.access import OPEN_MODE, Principal

T = TypeVar("T")


def caller(request: Request) -> Principal:
    """The principal the guard let through (open mode when the route is public)."""
    found = getattr(request.state, "principal", None)
    return found if isinstance(found, Principal) else OPEN_MODE


class Scopes:
    """Scope checks over the state; the lot → districts map and the regions are cached per
    registry version."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._version: int | None = None
        self._lot_districts: dict[str, set[str]] = {}
        self._regions = RegionIndex()

    def _refresh(self) -> None:
        version = self._state.registry_version()
        with self._lock:
            if version != self._version:
                rows = self._state.registry_rows()
                lots: dict[str, set[str]] = {}
                for row in rows:
                    if row.lot:
                        lots.setdefault(row.lot, set()).add(row.district or "")
                self._lot_districts, self._regions = lots, RegionIndex.from_rows(rows)
                self._version = version

    def _lots(self) -> dict[str, set[str]]:
        self._refresh()
        return self._lot_districts

    def _region_of(self, subject: str, name: str | None) -> str:
        self._refresh()
        return self._regions.of(subject, name)

    def meter(self, who: Principal, meter: str) -> bool:
        if who.everywhere:
            return True
        row = self._state.get_meter(meter)
        if row is not None:
            return bool({row.district, row.lot, row.effective_region} & who.scope)
        seen = self._state.seen(meter)
        return seen is not None and self.district(who, seen.get("district"))

    def listed_meter(
        self, who: Principal, meter: str, district: str | None, lot: str | None
    ) -> bool:
        """A meter of a list (its district and lot known): the same answer as `meter`."""
        if who.everywhere or bool({district, lot} & who.scope):
            return True
        self._refresh()
        return self._regions.of("meter", meter, district) in who.scope

    def district(self, who: Principal, district: str | None) -> bool:
        if who.everywhere:
            return True
        if district is None:
            return False
        return district in who.scope or self._region_of("district", district) in who.scope

    def lot(self, who: Principal, lot: str | None) -> bool:
        if who.everywhere:
            return True
        if lot is None:
            return False
        if lot in who.scope or self._region_of("lot", lot) in who.scope:
            return True
        return bool(self._lots().get(lot, set()) & who.scope)

    def alert(self, who: Principal, alert: dict[str, Any]) -> bool:
        if who.everywhere:
            return True
        # By its subject: a meter's alert goes with the meter (its lot is only context).
        meter, lot, district = alert.get("meter"), alert.get("lot"), alert.get("district")
        if meter is not None:
            return self.meter(who, str(meter))
        if lot is not None:
            return self.lot(who, str(lot))
        return self.district(who, district)

    def row_in_scope(
        self, who: Principal, district: str | None, lot: str | None, region: str | None = None
    ) -> bool:
        """A registry row a caller may write: its region, district or lot is in scope."""
        return who.everywhere or bool({district, lot, region} & who.scope)


def require(visible: bool, message: str) -> None:
    """The 404 an unknown subject gets, for one outside the caller's scope too."""
    if not visible:
        raise HTTPException(404, message)


def scoped_page(
    fetch: Callable[[str | None, int], Sequence[T]],
    keep: Callable[[T], bool],
    key: Callable[[T], str],
    after: str | None,
    limit: int,
) -> tuple[list[T], bool]:
    """Up to `limit` rows that `keep` passes, fetched in batches after `after`; and
    whether more rows follow. Each batch resumes after the last row read."""
    out: list[T] = []
    batch = max(limit + 1, 500)
    while True:
        rows = fetch(after, batch)
        for row in rows:
            if keep(row):
                if len(out) == limit:
                    return out, True
                out.append(row)
        if len(rows) < batch:
            return out, False
        after = key(rows[-1])
