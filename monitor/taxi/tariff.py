"""Taxi tariffs (docs/mqtt.md, "Tariff body"): the tariff body, a book of versions, and the fare formula.

Money is computed in `Decimal` from the shortest decimal form of every float, so that
a fare the tariff makes exactly 22.5 CNY is 22.5 and not 22.499999…, and rounding half
up to the charge step gives what a passenger would compute by hand.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, time
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"

Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A money or distance value: finite and not negative."""
PositiveAmount = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A finite value that must be strictly positive (a rate or a step)."""
ClockTime = Annotated[str, Field(pattern=_HHMM)]
"""Local wall-clock time "HH:MM", 00:00 to 23:59."""
DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
"""The zone of a tariff that names none and was loaded without a configured zone
(the default of `scheduling.timezone`)."""


def check_zone(value: str) -> str:
    """An IANA time zone name, or ValueError saying what is expected."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (an IANA name, e.g. Asia/Shanghai)"
        ) from None
    return value


class _Body(BaseModel):
    # Frozen so a tariff in force can be shared between threads; extra keys are refused
    # because a misspelt key in a tariff would otherwise silently fall back to nothing.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateSet(_Body):
    """One set of running rates: flag fall, included km, per-km rate, long-distance surcharge."""

    flag_fall: Amount
    flag_km: Amount
    per_km: PositiveAmount
    long_km: Amount
    long_factor: Amount


class NightRateSet(RateSet):
    """The night rates and the local-time window [start, end) they apply in; may wrap midnight."""

    start: ClockTime
    end: ClockTime

    def contains(self, local: time) -> bool:
        """Whether a local time of day lies in [start, end); start == end is an empty window."""
        start, end = _clock(self.start), _clock(self.end)
        if start <= end:
            return start <= local < end
        return local >= start or local < end


class Waiting(_Body):
    """Waiting time charged as `km_equivalent` km of the running rate per full `per_minutes`."""

    per_minutes: PositiveAmount
    km_equivalent: Amount


class Tariff(_Body):
    """A tariff body of docs/mqtt.md, as in config/tariffs.yaml and the rollout API.

    `timezone` (IANA, optional) is where the night window's clock times are read.
    The loaders fill it with the configured scheduling zone when a body names none;
    it is never inferred from the offset of `effective_from`, which only fixes an
    instant (a body written with `Z` is still a Shanghai tariff).
    """

    effective_from: AwareDatetime
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    day: RateSet
    night: NightRateSet
    waiting: Waiting
    display_step: Amount
    charge_step: PositiveAmount
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else check_zone(value)

    def in_zone(self, zone: str | None) -> Tariff:
        """This tariff, naming `zone` when it names none yet."""
        if self.timezone is not None or zone is None:
            return self
        return self.model_copy(update={"timezone": check_zone(zone)})


class TariffError(ValueError):
    """A tariff file or body that cannot be used; the message names the version and field."""


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _dec(value: float) -> Decimal:
    """The decimal a human wrote for this float (repr is the shortest round-tripping form)."""
    return Decimal(repr(float(value)))


def _require_aware(at: datetime, what: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {at.isoformat()}")


def _require_amount(value: float, what: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {value!r}")


def tariff_zone(tariff: Tariff) -> ZoneInfo:
    """The zone the tariff's night window is read in: the one it names, else the default."""
    return ZoneInfo(tariff.timezone or DEFAULT_TIMEZONE)


def rate_set_at(tariff: Tariff, end: datetime) -> RateSet:
    """The rate set of a trip ending at `end`: night when its local end time is in the window."""
    _require_aware(end, "trip end")
    local = end.astimezone(tariff_zone(tariff)).time()
    return tariff.night if tariff.night.contains(local) else tariff.day


def fare_decimal(tariff: Tariff, distance_km: float, wait_s: float, end: datetime) -> Decimal:
    """The unrounded fare F of docs/mqtt.md, exact in decimal arithmetic."""
    _require_amount(distance_km, "distance_km")
    _require_amount(wait_s, "wait_s")
    rates = rate_set_at(tariff, end)
    d = _dec(distance_km)
    per_km, flag_km, long_km = _dec(rates.per_km), _dec(rates.flag_km), _dec(rates.long_km)
    zero = Decimal(0)
    base = per_km * max(zero, min(d, long_km) - flag_km)
    long = per_km * _dec(rates.long_factor) * max(zero, d - max(long_km, flag_km))
    blocks = (_dec(wait_s) / (60 * _dec(tariff.waiting.per_minutes))).to_integral_value(
        rounding=ROUND_FLOOR
    )
    waiting = blocks * _dec(tariff.waiting.km_equivalent) * per_km
    return _dec(rates.flag_fall) + base + long + waiting


def fare_cny(tariff: Tariff, distance_km: float, wait_s: float, end: datetime) -> float:
    """The unrounded fare F (CNY) of a trip of `distance_km` km and `wait_s` s waiting."""
    return float(fare_decimal(tariff, distance_km, wait_s, end))


def round_half_up(value: float | Decimal, step: float) -> float:
    """`value` rounded half up to a multiple of `step` (> 0), without float artefacts."""
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    exact = value if isinstance(value, Decimal) else _dec(value)
    unit = _dec(step)
    multiples = (exact / unit).to_integral_value(rounding=ROUND_HALF_UP)
    return float(multiples * unit)


def charged_fare_cny(tariff: Tariff, distance_km: float, wait_s: float, end: datetime) -> float:
    """The fare actually charged: F rounded half up to the tariff's charge step."""
    return round_half_up(fare_decimal(tariff, distance_km, wait_s, end), tariff.charge_step)


class TariffBook:
    """An immutable map from tariff version to `Tariff`, answering which one is in force."""

    def __init__(self, tariffs: Mapping[str, Tariff] | None = None) -> None:
        """Wrap already validated tariffs (use `from_bodies` for raw data)."""
        self._tariffs: dict[str, Tariff] = dict(tariffs or {})

    @classmethod
    def from_bodies(
        cls, bodies: Mapping[Any, Any], source: str = "tariffs", zone: str | None = None
    ) -> TariffBook:
        """Validate a map version → raw body; errors name the source and the version.

        A body that names no `timezone` gets `zone` (the scheduling zone) when given.
        """
        tariffs: dict[str, Tariff] = {}
        for version, body in bodies.items():
            name = str(version)
            try:
                tariffs[name] = Tariff.model_validate(body).in_zone(zone)
            except ValidationError as exc:
                raise TariffError(f"{source}: tariff {name}: {_describe(exc)}") from exc
        return cls(tariffs)

    def in_force(self, at: datetime) -> tuple[str, Tariff] | None:
        """The newest (version, tariff) whose effective_from <= `at`, or None before the first.

        Versions with the same effective_from are told apart by the greater version name,
        so the answer never depends on file order.
        """
        _require_aware(at, "at")
        candidates = [
            (tariff.effective_from, version)
            for version, tariff in self._tariffs.items()
            if tariff.effective_from <= at
        ]
        if not candidates:
            return None
        _, version = max(candidates)
        return version, self._tariffs[version]

    def with_tariff(self, version: str, tariff: Tariff) -> TariffBook:
        """A new book with `version` added or replaced."""
        return TariffBook({**self._tariffs, version: tariff})

    def get(self, version: str) -> Tariff | None:
        """The tariff of `version`, or None."""
        return self._tariffs.get(version)

    def items(self) -> list[tuple[str, Tariff]]:
        """(version, tariff) pairs, oldest effective_from first."""
        return sorted(self._tariffs.items(), key=lambda vt: (vt[1].effective_from, vt[0]))

    def __getitem__(self, version: str) -> Tariff:
        return self._tariffs[version]

    def __contains__(self, version: object) -> bool:
        return version in self._tariffs

    def __iter__(self) -> Iterator[str]:
        return iter(v for v, _ in self.items())

    def __len__(self) -> int:
        return len(self._tariffs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TariffBook) and self._tariffs == other._tariffs

    def __repr__(self) -> str:
        return f"TariffBook({sorted(self._tariffs)!r})"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def load_tariffs(path: str | os.PathLike[str], zone: str | None = None) -> TariffBook:
    """Read and validate a tariffs YAML file (a map version → body, docs/mqtt.md).

    Tariffs that name no `timezone` are read in `zone` (pass `scheduling.timezone`).
    """
    with open(path, encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise TariffError(f"{os.fspath(path)}: not valid YAML: {exc}") from exc
    if raw is None:
        return TariffBook()
    if not isinstance(raw, Mapping):
        raise TariffError(f"{os.fspath(path)}: expected a map from version to tariff body")
    return TariffBook.from_bodies(raw, source=os.fspath(path), zone=zone)


SHANGHAI_2022: Final[dict[str, Any]] = {
    # The Shanghai tariff of docs/metrology.md, the same as config/tariffs.yaml; a
    # built-in default so a simulator or test needs no config folder.
    "effective_from": "2022-01-15T00:00:00+08:00",
    "currency": "CNY",
    "day": {"flag_fall": 14.0, "flag_km": 3.0, "per_km": 2.7, "long_km": 15.0, "long_factor": 1.5},
    "night": {
        "start": "23:00",
        "end": "05:00",
        "flag_fall": 18.0,
        "flag_km": 3.0,
        "per_km": 3.5,
        "long_km": 15.0,
        "long_factor": 1.5,
    },
    "waiting": {"per_minutes": 4, "km_equivalent": 1.5},
    "display_step": 0.1,
    "charge_step": 1.0,
    "timezone": "Asia/Shanghai",
}


def default_tariff_book() -> TariffBook:
    """The built-in book: SH-2022 only."""
    return TariffBook.from_bodies({"SH-2022": SHANGHAI_2022}, source="built-in")
