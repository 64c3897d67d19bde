"""Line protocol: escaping and types (the InfluxDB tests write it to a real server)."""

from __future__ import annotations

from monitor.core.schema import ELEC_EVENT, ELEC_READING, TAXI_TRIP, Record
from monitor.store.lineproto import escape_tag, to_line


def test_reading_line() -> None:
    rec = Record(ELEC_READING, "M1", "TA1", 1700000000000, {"energy_kwh": 12.0, "seq": 7})
    assert to_line(rec) == "elec_reading,meter=M1,district=TA1 energy_kwh=12.0,seq=7i 1700000000000"


def test_event_tags_and_string_escaping() -> None:
    rec = Record(ELEC_EVENT, "M1", "TA1", 5, {"code": "cover_open", "detail": 'say "hi"\\ now'})
    assert to_line(rec) == (
        'elec_event,meter=M1,district=TA1,code=cover_open detail="say \\"hi\\"\\\\ now" 5'
    )


def test_event_without_fields_still_has_one() -> None:
    rec = Record(ELEC_EVENT, "M1", "TA1", 5, {"code": "power_down"})
    assert to_line(rec).endswith(" count=1i 5")


def test_trip_has_no_district_tag() -> None:
    rec = Record(TAXI_TRIP, "T1", "", 9, {"trip_id": "a b", "meter_km": 5, "tariff_version": "v"})
    assert to_line(rec) == 'taxi_trip,meter=T1 trip_id="a b",meter_km=5.0,tariff_version="v" 9'


def test_tag_escaping() -> None:
    assert escape_tag("a b,c=d") == r"a\ b\,c\=d"


def test_result_points_leave_out_what_is_unknown() -> None:
    from monitor.core.schema import METER_STATE
    from monitor.store.lineproto import output_line

    line = output_line(
        METER_STATE,
        {"meter": "E 1", "kind": "elec", "district": None, "region": ""},
        {"state": "normal", "evaluable": True, "error_pct": float("nan"), "n": 480},
        1000,
    )
    assert line == 'meter_state,meter=E\\ 1,kind=elec state="normal",evaluable=1i,n=480i 1000'
    assert output_line(METER_STATE, {"meter": "E1"}, {"error_pct": None}, 1000) is None
