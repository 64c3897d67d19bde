"""The simulated fleet: electricity areas and taxis, stepped one interval at a time.

`Fleet.messages(a, b)` yields, in publish order, everything published in [a, b). The
fleet keeps its state between calls, so `messages(a, b)` then `messages(b, c)` gives the
same stream as `messages(a, c)`: registers continue, late messages arrive later.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from monitor.simulate.delivery import Delivery, DeliveryCounts
from monitor.simulate.elec import ElecFleet
from monitor.simulate.registry import write_registry_csv
from monitor.simulate.spec import FleetSpec, MeterTruth, Produced, SimMessage, rng_for
from monitor.simulate.taxi import TaxiFleet
from monitor.taxi.tariff import Tariff, TariffBook, default_tariff_book

__all__ = ["Fleet", "FleetSpec", "SimMessage", "write_registry_csv"]

_DELIVERY_KEY = 13


class Fleet:
    """A deterministic simulated fleet with ground truth (see `FleetSpec`)."""

    def __init__(self, spec: FleetSpec, tariffs: TariffBook | None = None) -> None:
        """Lay out the fleet; taxis hold `tariffs` (default: the built-in SH-2022)."""
        self.spec = spec
        self.tariffs = tariffs if tariffs is not None else default_tariff_book()
        self.elec = ElecFleet(spec)
        self.taxi = TaxiFleet(spec, self.tariffs)
        self._delivery = Delivery(spec)
        # Telemetry is on the interval grid: the first step starts at the first interval
        # boundary at or after start_ms, so readings land on :00, :15, :30, :45.
        self._next_k = -(-spec.start_ms // spec.interval_ms)
        self._outbox: deque[tuple[int, SimMessage]] = deque()
        self._cursor_ms = spec.start_ms

    @property
    def generated_until_ms(self) -> int:
        """Event time up to which the meters have been simulated (exclusive)."""
        return self._next_k * self.spec.interval_ms

    @property
    def delivery_counts(self) -> DeliveryCounts:
        """What the delivery defects did to the messages made so far (withheld, duplicated...)."""
        return self._delivery.counts

    @property
    def cursor_ms(self) -> int:
        """Publish time up to which messages have been handed out."""
        return self._cursor_ms

    def registry_rows(self) -> list[dict[str, str]]:
        """The fleet's registry: one row per meter with exactly the columns of docs/registry.md."""
        return self.elec.registry_rows() + self.taxi.registry_rows()

    def truth(self) -> dict[str, MeterTruth]:
        """Ground truth per meter id: kind, error_pct, faults, events so far and more."""
        return {**self.elec.truth(), **self.taxi.truth()}

    def true_energy_kwh(self, meter_id: str, start_ms: int, end_ms: int) -> float:
        """True energy through an electricity meter over the whole intervals in [start, end)."""
        step = self.spec.interval_ms
        return self.elec.true_energy_kwh(meter_id, -(-start_ms // step), end_ms // step)

    def push_tariff(
        self, version: str, tariff: Tariff, at_ms: int, meters: Iterable[str] | None = None
    ) -> None:
        """Simulate a `cmd/tariff` reaching taxi meters (all when `meters` is None) at `at_ms`.

        Meters apply it and answer `tariff_applied` (detail: the version); a stale meter
        ignores it. A command for a time already simulated takes effect at the next interval.
        """
        self.tariffs = self.tariffs.with_tariff(version, tariff)
        self.taxi.push_tariff(version, tariff, at_ms, meters)

    def messages(self, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        """Messages published in [start_ms, end_ms), in publish order.

        Time only moves forward: `start_ms` may not be before the previous call's end (or
        the last message handed out). A later start skips, but still simulates, the gap.
        """
        if end_ms < start_ms:
            raise ValueError(f"end_ms {end_ms} is before start_ms {start_ms}")
        if start_ms < self._cursor_ms:
            raise ValueError(
                f"start_ms {start_ms} is before {self._cursor_ms}, already simulated and handed out"
            )
        return self._iterate(start_ms, end_ms)

    def _iterate(self, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        while True:
            if not self._outbox:
                if self.generated_until_ms >= end_ms:
                    break
                self._step()
                continue
            publish_ms, message = self._outbox[0]
            if publish_ms >= end_ms:
                break
            self._outbox.popleft()
            self._cursor_ms = publish_ms
            if publish_ms >= start_ms:
                yield message
        self._cursor_ms = max(self._cursor_ms, end_ms)

    def _step(self) -> None:
        k = self._next_k
        t0 = k * self.spec.interval_ms
        t1 = t0 + self.spec.interval_ms
        produced = Produced()
        self.elec.step(k, produced)
        self.taxi.step(t0, t1, k, produced)
        rng = rng_for(self.spec.seed, _DELIVERY_KEY, k)
        self._outbox.extend(self._delivery.deliver(produced, t1, rng))
        self._next_k = k + 1
