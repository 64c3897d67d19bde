"""The InfluxDB backend: spool on disk, flush with influxdb-client, read with InfluxQL.

Why not the client's batching `WriteApi`: it holds batches in memory, so a
message acknowledged to the broker after `write()` would be lost by a crash.
We journal each batch to the `Spool` (the durable, bounded buffer) first and
let one flusher thread send the oldest segments with the client's synchronous
writer (gzip, urllib3 retries), backing off while InfluxDB is down.

Reads use InfluxQL on `/query`, served by InfluxDB 1.x, 2.x (DBRP mapping;
every 2.x bucket has a virtual one) and 3.x alike. A bucket written `db/rp`
addresses a 1.x database and retention policy.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from numpy.typing import NDArray

from monitor.core.clock import DAY_MS
from monitor.core.ports import (
    Columns,
    DayMarks,
    MeterPoint,
    Point,
    Series,
    StoreHealth,
    meter_series,
    text_or_float_columns,
    written_days,
)
from monitor.core.schema import Measurement, Record
from monitor.platform.config import InfluxSettings
from monitor.platform.metrics import Metrics
from monitor.store.lineproto import to_lines
from monitor.store.spool import Segment, Spool

log = logging.getLogger(__name__)

# 4xx answers that no retry can fix: the points are malformed or conflict with
# the schema. Anything else (5xx, 429, auth, network) is retried.
_PERMANENT = {400, 404, 413, 422}


def quote_ident(name: str) -> str:
    """InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# `series` reads windows at least this long in `InfluxStore.series_parts` time ranges.
SERIES_SPLIT_MS = 2 * DAY_MS
# Bulk answers uncompressed: InfluxDB's gzip costs it more CPU than the query itself.
_PLAIN = {"Accept-Encoding": "identity"}


def window_parts(start_ms: int, end_ms: int, parts: int, min_ms: int) -> list[tuple[int, int]]:
    """[start, end] cut into `parts` consecutive ranges [lo, hi), the last one [lo, end].

    Each instant of [start, end] (any precision) lies in exactly one range. A window
    shorter than `min_ms`, or than `parts` ms, stays whole.
    """
    start_ms, end_ms = int(start_ms), int(end_ms)
    span = end_ms - start_ms
    if parts <= 1 or span < max(min_ms, parts):
        return [(start_ms, end_ms)]
    cuts = [start_ms + span * k // parts for k in range(parts)]
    return [(lo, hi) for lo, hi in zip(cuts, [*cuts[1:], end_ms], strict=True)]


def db_rp(bucket: str) -> tuple[str, str | None]:
    """`meters/autogen` → (`meters`, `autogen`); a bare bucket has no rp."""
    db, _, rp = bucket.partition("/")
    return db, rp or None


class InfluxStore:
    """Telemetry in InfluxDB, with a disk spool while it is unreachable."""

    backend = "influxdb"
    # Time ranges a long `series` window is read in, concurrently (1: one query).
    series_parts = 2

    def __init__(
        self,
        settings: InfluxSettings,
        spool_dir: Path,
        metrics: Metrics,
        marks: DayMarks | None = None,
    ) -> None:
        """`marks` hears of the (district, day)s of electricity readings of every batch
        once InfluxDB has accepted it (also a batch replayed from the spool after a
        restart): the days incremental passes re-read."""
        assert settings.url, "validated by StorageSettings"
        self._s = settings
        self._marks = marks
        self._metrics = metrics
        self._dropped = 0
        self._spool = Spool(spool_dir, int(settings.spool_max_mb * 1024 * 1024), self._drop)
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token,
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
            enable_gzip=True,
        )
        self._writer = self._client.write_api(write_options=SYNCHRONOUS)
        self._http = httpx.Client(
            base_url=settings.url,
            timeout=settings.timeout_s,
            headers={"Authorization": f"Token {settings.token}"} if settings.token else {},
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_error = ""
        self._metrics.buffered.set(self._spool.points)
        self._thread = threading.Thread(target=self._flush_loop, name="influx-flush", daemon=True)
        self._thread.start()

    # -- writing -----------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Journal the batch to the spool (durable on return) and wake the flusher."""
        if not records:
            return
        # The batch's days travel with it in the spool and are marked once InfluxDB has
        # it (`_flush`): marked now, a pass could summarise a day before it is readable.
        days = written_days(records) if self._marks is not None else set()
        self._spool.append(to_lines(records), json.dumps(sorted(days)) if days else "")
        counts: dict[str, int] = {}
        for r in records:
            counts[r.measurement.name] = counts.get(r.measurement.name, 0) + 1
        for name, n in counts.items():
            self._metrics.written.labels(measurement=name).inc(n)
        self._metrics.buffered.set(self._spool.points)
        self._wake.set()

    def write_lines(self, lines: Sequence[str], measurement: str) -> None:
        """Journal ready-made line protocol (the evaluation's result points) like `write`."""
        if not lines:
            return
        self._spool.append(list(lines))
        self._metrics.written.labels(measurement=measurement).inc(len(lines))
        self._metrics.buffered.set(self._spool.points)
        self._wake.set()

    def _flush_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            segments = self._spool.peek(self._s.flush_max_points)
            if not segments:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._flush(segments):
                backoff = 0.5
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._s.retry_max_s)

    def _flush(self, segments: list[Segment]) -> bool:
        points = sum(s.points for s in segments)
        body, notes = Spool.load(segments)
        try:
            self._writer.write(
                bucket=self._s.bucket,
                org=self._s.org,
                record=body,
                write_precision=cast(WritePrecision, WritePrecision.MS),
            )
        except ApiException as exc:
            if exc.status in _PERMANENT:
                log.error(
                    "InfluxDB refused %d points for good (%s): %s", points, exc.status, exc.body
                )
                if not self._mark(notes):  # a partial write may have stored some of them
                    return self._failed("written days not marked")
                self._drop(points)
                self._spool.remove(segments)
                return True
            return self._failed(f"InfluxDB answered {exc.status}: {exc.reason}")
        except Exception as exc:  # network errors come in many urllib3 shapes
            return self._failed(f"InfluxDB unreachable: {exc.__class__.__name__}: {exc}")
        # Marked before the segments go: a crash in between sends them (and marks) again.
        if not self._mark(notes):
            return self._failed("written days not marked")
        self._spool.remove(segments)
        self._metrics.flushed.inc(points)
        self._metrics.buffered.set(self._spool.points)
        self._last_error = ""
        return True

    def _mark(self, notes: list[str]) -> bool:
        """Mark the days the flushed segments wrote; False when the marks could not be
        stored (the segments stay, and are sent and marked again)."""
        if self._marks is None or not notes:
            return True
        days = {(district, int(day)) for note in notes for district, day in json.loads(note)}
        try:
            self._marks.mark_days(days)
        except Exception:
            log.exception("could not mark %d written day(s)", len(days))
            return False
        return True

    def _failed(self, reason: str) -> bool:
        if reason != self._last_error:
            log.warning("%s; %d points spooled", reason, self._spool.points)
        self._last_error = reason
        self._metrics.store_errors.labels(backend=self.backend).inc()
        return False

    def _drop(self, points: int) -> None:
        self._dropped += points
        self._metrics.dropped.inc(points)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the spool is empty (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self._spool.points and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        left = self._spool.points
        self._metrics.buffered.set(left)  # the flusher may not have updated it yet
        return left == 0

    # -- reading -----------------------------------------------------------

    def query(self, q: str) -> list[dict[str, Any]]:
        """Run InfluxQL; rows as dicts with `time` in epoch ms."""
        rows: list[dict[str, Any]] = []
        for series in _result_series(self._get(q)):
            cols, tags = series["columns"], series.get("tags", {})
            rows.extend({**tags, **dict(zip(cols, v, strict=True))} for v in series["values"])
        return rows

    def _get(self, q: str, headers: dict[str, str] | None = None) -> Any:
        db, rp = db_rp(self._s.bucket)
        params = {"db": db, "q": q, "epoch": "ms"}
        if rp:
            params["rp"] = rp
        resp = self._http.get("/query", params=params, headers=headers)
        resp.raise_for_status()
        return resp.json()

    def history(
        self,
        measurement: Measurement,
        meter: str,
        fields: Sequence[str],
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
    ) -> list[Point]:
        """Points of one meter in [start, end), oldest first."""
        cols = ", ".join(quote_ident(f) for f in fields) or "*"
        where = [f"{quote_ident('meter')} = {quote_literal(meter)}"]
        if start_ms is not None:
            where.append(f"time >= {int(start_ms)}ms")
        if end_ms is not None:
            where.append(f"time < {int(end_ms)}ms")
        q = (
            f"SELECT {cols} FROM {quote_ident(measurement.name)} WHERE {' AND '.join(where)} "
            f"ORDER BY time ASC LIMIT {int(limit)}"
        )
        return [_point(row) for row in self.query(q)]

    def latest(self, measurement: Measurement, meter: str) -> Point | None:
        """Newest point of a meter."""
        q = (
            f"SELECT * FROM {quote_ident(measurement.name)} "
            f"WHERE {quote_ident('meter')} = {quote_literal(meter)} ORDER BY time DESC LIMIT 1"
        )
        rows = self.query(q)
        return _point(rows[0]) if rows else None

    def series(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        district: str | None = None,
    ) -> dict[str, Series]:
        """Numeric fields per meter in [start, end] (InfluxQL, GROUP BY meter).

        What InfluxDB spends on a district's 30 days is mostly its own encoding of the
        answer (`python -m bench.store --influx`), so: the answer is asked uncompressed
        (`Accept-Encoding: identity`; httpx asks for gzip by default, and InfluxDB's gzip of
        the ~24 MB answer doubled its CPU), and a window of `SERIES_SPLIT_MS` or more is
        read as `series_parts` consecutive time ranges (`window_parts`) fetched and decoded
        concurrently, so that InfluxDB encodes one range while this process decodes
        another. The ranges partition [start, end] exactly (each point is in one) and come
        back in time order, so the Series are the same as one query's.
        """
        head = (
            f"SELECT {', '.join(quote_ident(f) for f in fields)} FROM {quote_ident(measurement.name)} "
            "WHERE "
        )
        tail = f" GROUP BY {quote_ident('meter')}"
        if district is not None:
            tail = f" AND {quote_ident('district')} = {quote_literal(district)}" + tail
        parts = window_parts(start_ms, end_ms, self.series_parts, SERIES_SPLIT_MS)
        queries = [
            f"{head}time >= {lo}ms AND time {'<=' if k == len(parts) - 1 else '<'} {hi}ms{tail}"
            for k, (lo, hi) in enumerate(parts)
        ]
        if len(queries) == 1:
            return series_from_response(self._get(queries[0], _PLAIN), fields)
        with ThreadPoolExecutor(len(queries) - 1, thread_name_prefix="influx-series") as pool:
            rest = [pool.submit(self._get, q, _PLAIN) for q in queries[1:]]
            answers = [self._get(queries[0], _PLAIN), *(f.result() for f in rest)]
        results = [r for answer in answers for r in answer.get("results", [])]
        return series_from_response({"results": results}, fields)

    def columns(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        meter: str | None = None,
    ) -> dict[str, Columns]:
        """Any fields of every meter (or one) in [start, end], per meter, as `Columns`
        (one InfluxQL query, GROUP BY meter; see `columns_from_response`)."""
        where = [f"time >= {int(start_ms)}ms", f"time <= {int(end_ms)}ms"]
        if meter is not None:
            where.append(f"{quote_ident('meter')} = {quote_literal(meter)}")
        q = (
            f"SELECT {', '.join(quote_ident(f) for f in fields)} FROM {quote_ident(measurement.name)} "
            f"WHERE {' AND '.join(where)} GROUP BY {quote_ident('meter')}"
        )
        text = [f for f in fields if measurement.fields.get(f) == "str"]
        return columns_from_response(self._get(q), fields, text)

    def points(self, measurement: Measurement, start_ms: int, end_ms: int) -> list[MeterPoint]:
        """Every point in [start, end], by time."""
        q = (
            f"SELECT * FROM {quote_ident(measurement.name)} "
            f"WHERE time >= {int(start_ms)}ms AND time <= {int(end_ms)}ms"
        )
        out = []
        for row in self.query(q):
            meter = row.pop("meter")
            ts = int(row.pop("time"))
            out.append(MeterPoint(meter, ts, {k: v for k, v in row.items() if v is not None}))
        return sorted(out, key=lambda p: p.ts_ms)

    # -- lifecycle ---------------------------------------------------------

    def health(self) -> StoreHealth:
        """Writable while the spool is; the detail says whether InfluxDB is reachable."""
        return StoreHealth(
            writable=True,
            backend=self.backend,
            buffered_points=self._spool.points,
            dropped_points=self._dropped,
            detail=self._last_error or "influxdb reachable",
        )

    def close(self) -> None:
        """Try a last flush, then stop; what is left stays spooled for next start."""
        self.flush(timeout_s=5.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._client.close()
        self._http.close()


def _point(row: dict[str, Any]) -> Point:
    ts = int(row.pop("time"))
    row.pop("meter", None)
    return Point(ts, {k: v for k, v in row.items() if v is not None})


def _result_series(payload: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise RuntimeError(f"InfluxQL error: {result['error']}")
        out.extend(result.get("series", []))
    return out


def _meter_rows(
    payload: Any, fields: Sequence[str]
) -> Iterator[tuple[str, list[str], list[list[Any]]]]:
    """(meter, the fields of `fields` it has, rows [time, *those fields]) per InfluxQL series."""
    for series in _result_series(payload):
        meter = series.get("tags", {}).get("meter")
        values = series.get("values") or []
        if meter is None or not values:
            continue
        columns: list[str] = series["columns"]
        order = ["time", *(f for f in fields if f in columns)]
        if columns != order:
            index = [columns.index(c) for c in order]
            values = [[v[i] for i in index] for v in values]
        yield meter, order[1:], values


def _in_time_order(
    pieces: Sequence[Series | Columns], fields: Sequence[str]
) -> tuple[NDArray[np.int64], dict[str, NDArray[Any]]]:
    """One meter's pieces (a partial answer splits a meter) joined, stably in time order."""
    if len(pieces) == 1:
        ts, cols = pieces[0].ts_ms, dict(pieces[0].values)
    else:
        ts = np.concatenate([p.ts_ms for p in pieces])
        cols = {f: np.concatenate([p.values[f] for p in pieces]) for f in fields}
    if len(ts) > 1 and bool((ts[1:] < ts[:-1]).any()):
        by_time = np.argsort(ts, kind="stable")
        ts, cols = ts[by_time], {f: v[by_time] for f, v in cols.items()}
    return ts, {f: cols[f] for f in fields}


def series_from_response(payload: Any, fields: Sequence[str]) -> dict[str, Series]:
    """An InfluxQL JSON answer grouped by meter (`GROUP BY meter`) → one Series per meter.

    Each InfluxQL series is converted as one block by numpy (null → NaN): no dict and no
    tuple per point. A field the answer lacks is all NaN; a meter split over several
    series (a partial answer) is joined and put in time order.
    """
    parts: dict[str, list[Series]] = {}
    for meter, present, values in _meter_rows(payload, fields):
        got = meter_series(values, present)
        missing = {f: np.full(len(got.ts_ms), np.nan) for f in fields if f not in got.values}
        parts.setdefault(meter, []).append(Series(got.ts_ms, got.values | missing))
    return {m: Series(*_in_time_order(parts[m], fields)) for m in sorted(parts)}


def columns_from_response(
    payload: Any, fields: Sequence[str], text: Sequence[str]
) -> dict[str, Columns]:
    """An InfluxQL JSON answer grouped by meter (`GROUP BY meter`) → `Columns` per meter.

    The `text` fields as object arrays (null → None), the others float64 (null → NaN); a
    field the answer lacks is all None / NaN; a meter split over several series (a
    partial answer) is joined and put in time order (stable).
    """
    parts: dict[str, list[Columns]] = {}
    for meter, present, values in _meter_rows(payload, fields):
        got = text_or_float_columns(values, present, text)
        n = len(got.ts_ms)
        missing = {
            f: np.full(n, None, dtype=object) if f in text else np.full(n, np.nan)
            for f in fields
            if f not in got.values
        }
        parts.setdefault(meter, []).append(Columns(got.ts_ms, got.values | missing))
    return {m: Columns(*_in_time_order(parts[m], fields)) for m in sorted(parts)}
