"""Day summaries of a backfill: what an import wrote, read back once and kept.

After a bulk import (`ingest.importer`) each touched district's recent imported days
(what a pass and a default backtest read) are read back from the telemetry store a
month at a time and kept as day summaries, so neither reads them from the store again. Reading back rather than encoding the imported lines themselves: a summary must
hold what the store answers (its duplicates resolved, its numbers as stored), and only
the store can say that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from monitor.core.clock import DAY_MS
from monitor.core.ports import DaySummaries, TelemetryStore
from monitor.electricity.days import load_district_days
from monitor.electricity.evaluate import READING_FIELDS
from monitor.evaluation.runner import SUMMARY_MARGIN_DAYS

# Days read back per district at a time (~15 MB of readings for 100 meters): the
# import's memory does not grow with the history's length.
CHUNK_DAYS = 30


def summarise(
    store: TelemetryStore,
    summaries: DaySummaries,
    days: Mapping[str, tuple[int, int]],
    window_days: float,
) -> int:
    """Keep the imported days (district → first and last UTC day) that passes and
    default backtests read as day summaries: the estimation window before the newest
    one and `SUMMARY_MARGIN_DAYS` more (older ones, which the next recorded pass would
    drop, stay in the store only). Read from the store where a day has no summary or
    was marked since; returns how many were kept."""
    upto = summaries.mark_sequence()
    span = math.ceil(window_days) + SUMMARY_MARGIN_DAYS
    kept = 0
    for district, (oldest, last) in sorted(days.items()):
        first = max(oldest, last - span)
        for lo in range(first, last + 1, CHUNK_DAYS):
            hi = min(lo + CHUNK_DAYS - 1, last)
            end = (hi + 1) * DAY_MS - 1
            _, read = load_district_days(
                store, summaries, district, lo * DAY_MS, end, upto, READING_FIELDS
            )
            kept += read.saved
    return kept
