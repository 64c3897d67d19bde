"""What part of the fleet a caller sees: meters, districts, lots and alerts in its scope.

A scope names districts and lots (or `*`). A meter is in scope when its registered
district or lot is named (an unregistered sender: the district it sends under); a lot
when it is named or one of its meters is in scope; an alert when its meter, lot or
district is. Whatever is out of scope answers exactly as an unknown one would (404),
so a scope never tells what exists outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import HTTPException, Request

from monitor.core.ports import StateStore
from monitor.platform.access import OPEN_MODE, Principal

T = TypeVar("T")


def caller(request: Request) -> Principal:
    """The principal the guard let through (open mode when the route is public)."""
    found = getattr(request.state, "principal", None)
    return found if isinstance(found, Principal) else OPEN_MODE


class Scopes:
    """Scope checks over the state; the lot → districts map is cached per registry version."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._version: int | None = None
        self._lot_districts: dict[str, set[str]] = {}

    def _lots(self) -> dict[str, set[str]]:
        version = self._state.registry_version()
        with self._lock:
            if version != self._version:
                lots: dict[str, set[str]] = {}
                for row in self._state.registry_rows():
                    if row.lot:
                        lots.setdefault(row.lot, set()).add(row.district or "")
                self._lot_districts, self._version = lots, version
            return self._lot_districts

    def meter(self, who: Principal, meter: str) -> bool:
        if who.everywhere:
            return True
        row = self._state.get_meter(meter)
        if row is not None:
            return bool({row.district, row.lot} & who.scope)
        seen = self._state.seen(meter)
        return seen is not None and seen.get("district") in who.scope

    def district(self, who: Principal, district: str | None) -> bool:
        return who.everywhere or (district is not None and district in who.scope)

    def lot(self, who: Principal, lot: str | None) -> bool:
        if who.everywhere:
            return True
        if lot is None:
            return False
        return lot in who.scope or bool(self._lots().get(lot, set()) & who.scope)

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

    def row_in_scope(self, who: Principal, district: str | None, lot: str | None) -> bool:
        """A registry row a caller may write: its district or lot is in scope."""
        return who.everywhere or bool({district, lot} & who.scope)


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
