"""Registered meters heard under another district's topic: one alert per meter.

Ingest dead-letters each such message (`district_mismatch`) and counts it in the
state. One stray message can be a misconfigured test; repeats are a re-wired
meter (the registry needs updating) or a spoofed topic (someone publishing as
the meter): once a meter has sent `alert_after` of them it is an alert, which
repeats while new ones arrive and resolves `clear_after_h` of event time after
the last one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from monitor.alerts.book import Condition
from monitor.core.clock import format_ts
from monitor.core.ports import MismatchRow
from monitor.ingest.limits import DistrictMismatchSettings

MISMATCH_RULE = "ingest.district_mismatch"
MISMATCH_RULES = (MISMATCH_RULE,)


def mismatch_conditions(
    rows: Iterable[MismatchRow], settings: DistrictMismatchSettings
) -> list[Condition]:
    """One condition per registered meter with at least `alert_after` mismatched messages."""
    by_meter: dict[str, list[MismatchRow]] = defaultdict(list)
    for row in rows:
        by_meter[row.meter].append(row)
    out = []
    for meter, found in sorted(by_meter.items()):
        messages = sum(r.messages for r in found)
        if messages < settings.alert_after:
            continue
        registered = found[0].registered_district
        topics = {r.topic_district: r.messages for r in found}
        named = ", ".join(f"{d} ({n})" for d, n in sorted(topics.items()))
        first, last = min(r.first_ts for r in found), max(r.last_ts for r in found)
        out.append(
            Condition(
                rule=MISMATCH_RULE,
                kind="elec",
                subject=meter,
                severity=settings.severity,
                message=(
                    f"{meter} is registered in district {registered} but sent {messages} "
                    f"message(s) under the topic of district {named} between "
                    f"{format_ts(first)} and {format_ts(last)}: a re-wired meter "
                    "(update the registry) or a spoofed topic; all were dead-lettered"
                ),
                at_ms=last,
                evidence={
                    "registered_district": registered,
                    "topic_districts": topics,
                    "messages": messages,
                    "threshold": settings.alert_after,
                    "first_ts": format_ts(first),
                    "last_ts": format_ts(last),
                },
                meter=meter,
                district=registered,
            )
        )
    return out
