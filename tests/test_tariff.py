"""The taxi tariff body and fare formula of docs/mqtt.md, on hand-computed cases."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from monitor.taxi.tariff import (
    SHANGHAI_2022,
    Tariff,
    TariffBook,
    TariffError,
    charged_fare_cny,
    default_tariff_book,
    fare_cny,
    load_tariffs,
    rate_set_at,
    round_half_up,
)

CST = timezone(timedelta(hours=8))
CONFIG = Path(__file__).resolve().parents[1] / "config" / "tariffs.yaml"
SH = Tariff.model_validate(SHANGHAI_2022)
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=CST)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A trip end on 2026-03-02, Shanghai local time."""
    return datetime(2026, 3, 2, hour, minute, second, tzinfo=CST)


def body(**changes: Any) -> dict[str, Any]:
    """The SH-2022 body with top-level keys replaced (None deletes)."""
    out = {**SHANGHAI_2022, **changes}
    return {k: v for k, v in out.items() if v is not None}


# --- the formula, by hand ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance_km", "expected"),
    [
        (0.0, 14.0),  # flag fall alone
        (2.0, 14.0),  # short trip inside the 3 included km
        (3.0, 14.0),  # exactly the included distance
        (4.0, 16.7),  # 14 + 1 × 2.7
        (15.0, 46.4),  # 14 + 12 × 2.7, the long-distance surcharge not yet
        (20.0, 66.65),  # 46.4 + 5 × 2.7 × 1.5
    ],
)
def test_day_fare_by_distance(distance_km: float, expected: float) -> None:
    assert fare_cny(SH, distance_km, 0, NOON) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("wait_s", "blocks"),
    [(0, 0), (239, 0), (240, 1), (479, 1), (480, 2), (1_000, 4)],
)
def test_waiting_is_charged_per_full_four_minutes(wait_s: int, blocks: int) -> None:
    # 10 km by day: 14 + 7 × 2.7 = 32.9, plus 1.5 km × 2.7 = 4.05 per full 4 minutes.
    assert fare_cny(SH, 10.0, wait_s, NOON) == pytest.approx(32.9 + 4.05 * blocks, abs=1e-9)


def test_night_waiting_uses_the_night_rate() -> None:
    # 10 km at night: 18 + 7 × 3.5 = 42.5; one 4-minute block = 1.5 × 3.5 = 5.25.
    assert fare_cny(SH, 10.0, 300, at(23, 30)) == pytest.approx(47.75, abs=1e-9)


def test_long_night_trip() -> None:
    # 20 km at night: 18 + 12 × 3.5 + 5 × 3.5 × 1.5 = 18 + 42 + 26.25.
    assert fare_cny(SH, 20.0, 0, at(1, 0)) == pytest.approx(86.25, abs=1e-9)


@pytest.mark.parametrize(
    ("end", "night"),
    [
        (at(22, 59, 59), False),
        (at(23, 0), True),  # the window starts at 23:00 exactly
        (at(0, 30), True),  # after midnight: the window wraps
        (at(4, 59), True),
        (at(4, 59, 59), True),
        (at(5, 0), False),  # and ends at 05:00 exactly
        (at(12, 0), False),
    ],
)
def test_night_window(end: datetime, night: bool) -> None:
    expected = 42.5 if night else 32.9  # 10 km, no waiting
    assert fare_cny(SH, 10.0, 0, end) == pytest.approx(expected, abs=1e-9)
    assert rate_set_at(SH, end) is (SH.night if night else SH.day)


def test_night_window_is_read_in_the_tariff_zone() -> None:
    # 15:00 UTC is 23:00 in Shanghai: night, whatever zone the caller used.
    assert SH.timezone == "Asia/Shanghai"
    assert rate_set_at(SH, datetime(2026, 3, 2, 15, 0, tzinfo=UTC)) is SH.night
    assert rate_set_at(SH, datetime(2026, 3, 2, 14, 59, tzinfo=UTC)) is SH.day


def test_an_offset_in_effective_from_does_not_set_the_zone() -> None:
    # A body written in UTC is still a Shanghai tariff: 03:32Z is 11:32 in Shanghai, day.
    utc = Tariff.model_validate(body(effective_from="2026-06-01T00:00:00Z", timezone=None))
    assert utc.timezone is None
    assert rate_set_at(utc, datetime(2026, 6, 2, 3, 32, tzinfo=UTC)) is utc.day
    assert rate_set_at(utc, datetime(2026, 6, 2, 15, 30, tzinfo=UTC)) is utc.night  # 23:30
    fixed = TariffBook.from_bodies({"v": body(effective_from="2026-06-01T00:00:00Z")})
    assert rate_set_at(fixed["v"], datetime(2026, 6, 2, 3, 32, tzinfo=UTC)) is fixed["v"].day


def test_a_tariff_names_its_zone_or_takes_the_configured_one() -> None:
    unnamed = body(timezone=None)
    book = TariffBook.from_bodies({"a": unnamed, "b": body(timezone="Asia/Tokyo")}, zone="UTC")
    assert (book["a"].timezone, book["b"].timezone) == ("UTC", "Asia/Tokyo")
    assert rate_set_at(book["a"], datetime(2026, 3, 2, 23, 30, tzinfo=UTC)) is book["a"].night
    assert rate_set_at(book["b"], datetime(2026, 3, 2, 14, 30, tzinfo=UTC)) is book["b"].night
    # without a configured zone, the default scheduling zone
    assert TariffBook.from_bodies({"a": unnamed})["a"].timezone is None
    default = Tariff.model_validate(unnamed)
    assert rate_set_at(default, at(23, 30)) is default.night  # Shanghai's 23:30


def test_a_zone_with_summer_time_follows_it() -> None:
    berlin = Tariff.model_validate(body(timezone="Europe/Berlin"))
    assert rate_set_at(berlin, datetime(2026, 7, 1, 21, 30, tzinfo=UTC)) is berlin.night  # 23:30
    assert rate_set_at(berlin, datetime(2026, 1, 15, 21, 30, tzinfo=UTC)) is berlin.day  # 22:30


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(TariffError, match=r"timezone.*unknown time zone"):
        TariffBook.from_bodies({"BAD-1": body(timezone="+08:00")})


def test_night_window_that_does_not_wrap() -> None:
    night = {**SHANGHAI_2022["night"], "start": "01:00", "end": "05:00"}
    tariff = Tariff.model_validate(body(night=night))
    assert rate_set_at(tariff, at(0, 30)) is tariff.day
    assert rate_set_at(tariff, at(1, 0)) is tariff.night
    assert rate_set_at(tariff, at(5, 0)) is tariff.day


def test_naive_trip_end_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        fare_cny(SH, 5.0, 0, datetime(2026, 3, 2, 12, 0))


@pytest.mark.parametrize(("distance_km", "wait_s"), [(-1.0, 0), (1.0, -5), (math.nan, 0)])
def test_bad_trip_values_are_refused(distance_km: float, wait_s: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        fare_cny(SH, distance_km, wait_s, NOON)


# --- rounding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "step", "expected"),
    [
        (22.5, 1.0, 23.0),
        (22.49, 1.0, 22.0),
        (22.51, 1.0, 23.0),
        (23.5, 1.0, 24.0),  # half up, not to even
        (0.15, 0.1, 0.2),  # binary 0.15 is 0.1499…; decimal arithmetic keeps it a half
        (2.675, 0.01, 2.68),
        (66.65, 0.5, 66.5),
        (66.75, 0.5, 67.0),
    ],
)
def test_round_half_up(value: float, step: float, expected: float) -> None:
    assert round_half_up(value, step) == expected


def test_charged_fare_rounds_half_up() -> None:
    assert charged_fare_cny(SH, 10.0, 0, at(23, 0)) == 43.0  # F = 42.5 exactly
    assert charged_fare_cny(SH, 20.0, 0, NOON) == 67.0  # F = 66.65
    assert charged_fare_cny(SH, 10.0, 0, NOON) == 33.0  # F = 32.9
    assert charged_fare_cny(SH, 4.0, 0, NOON) == 17.0  # F = 16.7


def test_round_half_up_needs_a_positive_step() -> None:
    with pytest.raises(ValueError, match="step"):
        round_half_up(1.0, 0.0)


# --- versions ---------------------------------------------------------------------------


def _book() -> TariffBook:
    later = body(
        effective_from="2026-03-01T00:00:00+08:00",
        day={**SHANGHAI_2022["day"], "flag_fall": 16.0},
    )
    return TariffBook.from_bodies({"SH-2022": SHANGHAI_2022, "SH-2026": later})


def test_in_force_picks_the_newest_effective_version() -> None:
    book = _book()
    assert book.in_force(datetime(2021, 12, 31, tzinfo=CST)) is None
    found = book.in_force(datetime(2026, 2, 28, 23, 59, 59, tzinfo=CST))
    assert found is not None and found[0] == "SH-2022"
    found = book.in_force(datetime(2026, 3, 1, 0, 0, tzinfo=CST))  # at, not only after
    assert found is not None and found[0] == "SH-2026" and found[1].day.flag_fall == 16.0
    found = book.in_force(datetime(2026, 2, 28, 16, 0, tzinfo=UTC))  # same instant in UTC
    assert found is not None and found[0] == "SH-2026"


def test_in_force_ties_break_by_version_name_not_order() -> None:
    same = {"B": SHANGHAI_2022, "A": SHANGHAI_2022}
    found = TariffBook.from_bodies(same).in_force(NOON)
    assert found is not None and found[0] == "B"


def test_in_force_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _book().in_force(datetime(2026, 3, 1))


def test_book_helpers() -> None:
    book = _book()
    assert list(book) == ["SH-2022", "SH-2026"]
    assert len(book) == 2 and "SH-2026" in book and book.get("nope") is None
    assert book.with_tariff("X", SH).get("X") == SH and "X" not in book


# --- validation -------------------------------------------------------------------------


def test_config_file_is_the_shanghai_tariff() -> None:
    book = load_tariffs(CONFIG)
    assert book == default_tariff_book()
    tariff = book["SH-2022"]
    assert tariff.effective_from == datetime(2022, 1, 15, tzinfo=CST)
    assert (tariff.day.flag_fall, tariff.day.flag_km, tariff.day.per_km) == (14.0, 3.0, 2.7)
    assert (tariff.day.long_km, tariff.day.long_factor) == (15.0, 1.5)
    assert (tariff.night.start, tariff.night.end) == ("23:00", "05:00")
    assert (tariff.night.flag_fall, tariff.night.per_km) == (18.0, 3.5)
    assert (tariff.waiting.per_minutes, tariff.waiting.km_equivalent) == (4, 1.5)
    assert (tariff.display_step, tariff.charge_step, tariff.currency) == (0.1, 1.0, "CNY")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"effective_from": "2022-01-15T00:00:00"}, "timezone"),
        ({"day": {**SHANGHAI_2022["day"], "per_km": -2.7}}, "day.per_km"),
        ({"day": {**SHANGHAI_2022["day"], "per_km": 0.0}}, "day.per_km"),
        ({"day": {**SHANGHAI_2022["day"], "flag_fall": float("inf")}}, "day.flag_fall"),
        ({"night": None}, "night"),
        ({"surcharge": 1.0}, "surcharge"),
        ({"day": {**SHANGHAI_2022["day"], "per_mile": 1.0}}, "day.per_mile"),
        ({"night": {**SHANGHAI_2022["night"], "start": "24:00"}}, "night.start"),
        ({"charge_step": 0.0}, "charge_step"),
        ({"waiting": {"per_minutes": 0, "km_equivalent": 1.5}}, "waiting.per_minutes"),
        ({"currency": "yuan"}, "currency"),
    ],
)
def test_invalid_bodies_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(TariffError, match=message) as caught:
        TariffBook.from_bodies({"BAD-1": body(**changes)})
    assert "BAD-1" in str(caught.value)


def test_tariff_is_frozen() -> None:
    with pytest.raises(ValidationError):
        SH.charge_step = 0.5  # type: ignore[misc]  # frozen: the test is that runtime refuses it too


def test_load_tariffs_reports_file_and_version(tmp_path: Path) -> None:
    path = tmp_path / "tariffs.yaml"
    path.write_text(CONFIG.read_text(encoding="utf-8").replace("per_km: 2.7", "per_km: -1"))
    with pytest.raises(TariffError, match=r"tariffs\.yaml: tariff SH-2022: day\.per_km"):
        load_tariffs(path)
    path.write_text("- not a map\n")
    with pytest.raises(TariffError, match="map from version"):
        load_tariffs(path)
    path.write_text("")
    assert len(load_tariffs(path)) == 0


# --- properties -------------------------------------------------------------------------

_money = st.floats(0.0, 50.0, allow_nan=False)
_clock = st.builds("{:02d}:{:02d}".format, st.integers(0, 23), st.integers(0, 59))


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    """Any valid tariff."""

    def rates() -> dict[str, float]:
        return {
            "flag_fall": draw(_money),
            "flag_km": draw(st.floats(0.0, 10.0)),
            "per_km": draw(st.floats(0.01, 10.0)),
            "long_km": draw(st.floats(0.0, 50.0)),
            "long_factor": draw(st.floats(0.0, 3.0)),
        }

    return Tariff.model_validate(
        {
            "effective_from": datetime(
                2022, 1, 1, tzinfo=timezone(timedelta(hours=draw(st.integers(-12, 14))))
            ),
            "currency": "CNY",
            "day": rates(),
            "night": {**rates(), "start": draw(_clock), "end": draw(_clock)},
            "waiting": {
                "per_minutes": draw(st.floats(0.5, 10.0)),
                "km_equivalent": draw(st.floats(0.0, 3.0)),
            },
            "display_step": 0.1,
            "charge_step": draw(st.sampled_from([0.1, 0.5, 1.0, 2.0])),
        }
    )


_distance = st.floats(0.0, 300.0, allow_nan=False)
_wait = st.floats(0.0, 10_000.0, allow_nan=False)
_end = st.datetimes(
    min_value=datetime(2022, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(CST)
)


@settings(max_examples=200, deadline=None)
@given(tariffs(), _distance, _distance, _wait, _end)
def test_fare_is_monotone_in_distance(
    tariff: Tariff, a: float, b: float, wait: float, end: datetime
) -> None:
    low, high = sorted((a, b))
    assert fare_cny(tariff, low, wait, end) <= fare_cny(tariff, high, wait, end)


@settings(max_examples=200, deadline=None)
@given(tariffs(), _distance, _wait, _wait, _end)
def test_fare_is_monotone_in_waiting(
    tariff: Tariff, distance: float, a: float, b: float, end: datetime
) -> None:
    low, high = sorted((a, b))
    assert fare_cny(tariff, distance, low, end) <= fare_cny(tariff, distance, high, end)


@settings(max_examples=200, deadline=None)
@given(tariffs(), _distance, _wait, _end)
def test_charged_fare_is_within_half_a_step(
    tariff: Tariff, distance: float, wait: float, end: datetime
) -> None:
    fare = fare_cny(tariff, distance, wait, end)
    charged = charged_fare_cny(tariff, distance, wait, end)
    assert abs(charged - fare) <= tariff.charge_step / 2 + 1e-9
    assert math.isclose(charged / tariff.charge_step, round(charged / tariff.charge_step))
