"""The embedded telemetry store: one SQLite file, one table per measurement.

Same semantics as the InfluxDB backend: a point is keyed by meter and its key
columns, so a duplicate overwrites itself (INSERT OR REPLACE) instead of
counting twice. A batch is one transaction; `write` returns after commit.

Bulk reads (`series`, what an evaluation pass reads per district) go meter by meter
along the primary key (meter, ts) and take the full UTC days of a window from day
blocks: each (meter, day) packed as numpy arrays, built on first read and dropped by
any `write` to that day (see `layout.migrate` for the layout, and
`python -m bench.store` for what it buys).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from monitor.core.clock import DAY_MS
from monitor.core.ports import (
    Columns,
    DayMarks,
    MeterPoint,
    Point,
    Series,
    StoreHealth,
    meter_series,
    taxi_day_key,
    text_or_float_columns,
    written_days,
)
from monitor.core.schema import MEASUREMENTS, TAXI_TRIP, Measurement, Record
from monitor.platform.metrics import Metrics
from monitor.store.embedded.blocks import (
    PACK_ROWS,
    Block,
    absent_column,
    block_fields,
    decode_columns,
    join_pieces,
    pack_column_blocks,
    pack_day_blocks,
    unpacked_days,
)
from monitor.store.embedded.layout import (
    column_blocked,
    day_blocked,
    migrate,
    record_row,
    table_columns,
)

log = logging.getLogger(__name__)


class EmbeddedStore:
    """SQLite telemetry store under MONITOR_DATA_DIR.

    store = EmbeddedStore(Path("data/telemetry.sqlite"), Metrics())
    store.write([record]); store.latest(ELEC_READING, "m1")
    """

    backend = "embedded"

    def __init__(
        self,
        path: Path,
        metrics: Metrics,
        synchronous: str = "NORMAL",
        pack_rows: int = PACK_ROWS,
        marks: DayMarks | None = None,
    ) -> None:
        """`marks` hears of the (district, day)s of electricity readings of every batch,
        once committed (`core.ports.written_days`): what incremental passes re-read."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics = metrics
        self._marks = marks
        self._pack_rows = pack_rows  # rows per packing write transaction
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit survives a killed process (the case that matters
        # for ack-after-store); FULL also survives power loss at ~2x the cost.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._cols = {name: table_columns(m) for name, m in MEASUREMENTS.items()}
        self._listed = {name for name, m in MEASUREMENTS.items() if "district" in m.tags}
        self._blocked = {name for name, m in MEASUREMENTS.items() if day_blocked(m)}
        self._col_blocked = {name for name, m in MEASUREMENTS.items() if column_blocked(m)}
        migrate(self._db)
        self._inserts = {
            name: f"INSERT OR REPLACE INTO {name} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
            for name, c in self._cols.items()
        }
        self._error = ""
        # Bulk reads (`series`) run on their own connection: under WAL they see committed
        # data as of their start and neither block nor wait for the writer's lock.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()

    def write(self, records: Sequence[Record]) -> None:
        """Insert a batch in one transaction."""
        groups: dict[str, list[tuple[object, ...]]] = defaultdict(list)
        pairs: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for r in records:
            name = r.measurement.name
            groups[name].append(record_row(r.measurement, self._cols[name], r))
            if r.district and name in self._listed:
                pairs[name].add((r.district, r.meter))
        with self._lock:
            try:
                self._db.execute("BEGIN")
                # Days a re-sent trip leaves (it replaces its row: see `_moved_days`).
                moved = self._moved_days(records) if self._marks is not None else set()
                for name, rows in groups.items():
                    self._db.executemany(self._inserts[name], rows)
                for name, listed in pairs.items():
                    self._db.executemany(
                        f"INSERT OR IGNORE INTO {name}_meters (district, meter) VALUES (?, ?)",
                        sorted(listed),
                    )
                for name in groups.keys() & (self._blocked | self._col_blocked):
                    self._unpack(name, groups[name])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._error = str(exc)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        self._error = ""
        for name, rows in groups.items():
            self._metrics.written.labels(measurement=name).inc(len(rows))
        if self._marks is not None:
            # After the commit: a mark never names a day before its readings are readable.
            # Should it fail, `write` raises and the caller writes the batch again (the
            # rows replace themselves), so no acknowledged reading goes unmarked.
            days = written_days(records) | moved
            if days:
                self._marks.mark_days(days)

    def _moved_days(self, records: Sequence[Record]) -> set[tuple[str, int]]:
        """The (taxi key, day)s of stored trips the batch re-sends with another end time.

        A trip's row is keyed by its trip_id: re-sent with another time it replaces the row
        in another day, and the day it leaves changed too (its summary still holds the
        old copy). Inside `write`'s transaction, before the inserts; one look-up per trip.
        """
        out = set()
        for r in records:
            if r.measurement.name != TAXI_TRIP.name or "trip_id" not in r.values:
                continue
            found = self._db.execute(
                "SELECT ts FROM taxi_trip WHERE meter = ? AND trip_id = ?",
                (r.meter, r.values["trip_id"]),
            ).fetchone()
            if found is not None and int(found[0]) // DAY_MS != r.ts_ms // DAY_MS:
                out.add((taxi_day_key(r.meter), int(found[0]) // DAY_MS))
        return out

    def _unpack(self, name: str, rows: list[tuple[object, ...]]) -> None:
        """Drop the day blocks of the (meter, day)s these rows were written to.

        Inside `write`'s transaction, after its inserts: the write lock is held, so the
        last packed day read here is current, also when another process packs. Live
        points are newer than any block: one comparison each, no probe.
        """
        found = self._db.execute(f"SELECT day FROM {name}_days_upto").fetchone()
        if found is None:
            return
        limit = (int(found[0]) + 1) * DAY_MS
        # Rows are (meter, ts, ...) as `record_row` makes them.
        touched = {
            (meter, ts // DAY_MS)
            for meter, ts, *_ in cast(list[tuple[str, int]], rows)
            if 0 <= ts < limit
        }
        if touched:
            self._db.executemany(
                f"DELETE FROM {name}_days WHERE meter = ? AND day = ?", sorted(touched)
            )

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
        cols = [c for c in fields if c in self._cols[measurement.name]]
        sql = f"SELECT ts, {', '.join(cols) or 'ts'} FROM {measurement.name} WHERE meter = ?"
        args: list[object] = [meter]
        if start_ms is not None:
            sql += " AND ts >= ?"
            args.append(start_ms)
        if end_ms is not None:
            sql += " AND ts < ?"
            args.append(end_ms)
        sql += " ORDER BY ts LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Point(row[0], dict(zip(cols, row[1:], strict=False))) for row in rows]

    def latest(self, measurement: Measurement, meter: str) -> Point | None:
        """Newest point of a meter by event time."""
        cols = [c for c in self._cols[measurement.name] if c not in ("meter", "ts")]
        sql = (
            f"SELECT ts, {', '.join(cols)} FROM {measurement.name} "
            "WHERE meter = ? ORDER BY ts DESC LIMIT 1"
        )
        with self._lock:
            row = self._db.execute(sql, (meter,)).fetchone()
        if row is None:
            return None
        return Point(row[0], {c: v for c, v in zip(cols, row[1:], strict=True) if v is not None})

    def series(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        district: str | None = None,
    ) -> dict[str, Series]:
        """Numeric fields per meter in [start, end].

        Meter by meter (the district's list, `meters`): the full UTC days of the window
        come from the day blocks (a few blobs per meter, no Python object per point), the
        partial days at its ends from the rows, along the primary key (meter, ts). Days
        not packed yet are packed first (once; later writes to a day drop its block).
        """
        name = measurement.name
        cols = [f for f in fields if f in self._cols[name]]
        numeric = measurement.numeric_fields()
        first, last = -(-max(start_ms, 0) // DAY_MS), (end_ms + 1) // DAY_MS - 1
        if not day_blocked(measurement) or first > last or not set(cols) <= set(numeric):
            with self._read_lock:
                return self._read(
                    self._meters(self._reader, measurement, district),
                    measurement,
                    cols,
                    start_ms,
                    end_ms,
                    district,
                    None,
                )
        days = (first, last)
        with self._read_lock:
            meters = self._meters(self._reader, measurement, district)
            todo = self._unpacked(name, meters, days, cols)
        if todo:
            try:
                self._pack(measurement, todo, days, cols)
            except sqlite3.OperationalError as exc:  # e.g. locked by another writer: rows
                log.warning("telemetry store: days not packed (%s); reading the rows", exc)
        with self._read_lock:
            return self._read(meters, measurement, cols, start_ms, end_ms, district, days)

    def _unpacked(
        self, name: str, meters: list[str], days: tuple[int, int], cols: Sequence[str] = ()
    ) -> list[str]:
        """The meters with a day of `days` not packed, or packed without one of `cols`."""
        # `cols` are the measurement's own column names (checked by the caller).
        covers = "".join(f" AND instr(',' || fields || ',', ',{c},') > 0" for c in cols)
        sql = f"SELECT count(*) FROM {name}_days WHERE meter = ? AND day BETWEEN ? AND ?{covers}"
        first, last = days
        return [
            m
            for m in meters
            if self._reader.execute(sql, (m, first, last)).fetchone()[0] < last - first + 1
        ]

    def _read(
        self,
        meters: list[str],
        measurement: Measurement,
        cols: list[str],
        start_ms: int,
        end_ms: int,
        district: str | None,
        days: tuple[int, int] | None,
    ) -> dict[str, Series]:
        """Per meter: rows in [start, end] or, with `days`, blocks for those days and rows
        around them (all rows if a day is not packed: written since `_pack`). Meters
        without a point are left out. Under `_read_lock`."""
        name = measurement.name
        select = (
            f"SELECT {', '.join(['ts', *cols])} FROM {name} WHERE meter = ? AND ts BETWEEN ? AND ?"
        )
        # `+district`: a filter on the meter's key range, never an index to use.
        select += " AND +district = ? ORDER BY ts" if district is not None else " ORDER BY ts"
        db = self._reader
        out: dict[str, Series] = {}

        def rows(meter: str, lo: int, hi: int) -> list[Any]:
            args = (meter, lo, hi, district) if district is not None else (meter, lo, hi)
            return db.execute(select, args).fetchall() if lo <= hi else []

        db.execute("BEGIN")  # one snapshot for every meter of the read
        try:
            for meter in meters:
                if days is None:
                    got = rows(meter, start_ms, end_ms)
                    if got:
                        out[meter] = meter_series(got, cols)
                    continue
                first, last = days
                blocks = self._days(db, name, meter, first, last)
                wanted = set(cols)
                if len(blocks) < last - first + 1 or any(
                    not wanted <= set(b.fields) for b in blocks
                ):
                    got = rows(meter, start_ms, end_ms)
                    if got:
                        out[meter] = meter_series(got, cols)
                    continue
                pieces = [meter_series(rows(meter, start_ms, first * DAY_MS - 1), cols)]
                run: list[Block] = []  # consecutive blocks taken whole, joined as bytes
                for b in blocks:
                    if district is not None and b.mixed:
                        pieces += unpacked_days(run, cols)
                        run = []
                        day_rows = rows(meter, b.day * DAY_MS, (b.day + 1) * DAY_MS - 1)
                        pieces.append(meter_series(day_rows, cols))
                    elif b.n and (district is None or b.district == district):
                        if run and run[0].fields != b.fields:
                            pieces += unpacked_days(run, cols)
                            run = []
                        run.append(b)
                pieces += unpacked_days(run, cols)
                pieces.append(meter_series(rows(meter, (last + 1) * DAY_MS, end_ms), cols))
                pieces = [p for p in pieces if len(p.ts_ms)]
                if pieces:
                    out[meter] = join_pieces(pieces, cols)
        finally:
            db.execute("COMMIT")
        return out

    @staticmethod
    def _days(db: sqlite3.Connection, name: str, meter: str, first: int, last: int) -> list[Block]:
        sql = (
            f"SELECT day, district, mixed, n, fields, ts, vals FROM {name}_days "
            "WHERE meter = ? AND day BETWEEN ? AND ? ORDER BY day"
        )
        out = []
        split: dict[str, tuple[str, ...]] = {}
        for day, district, mixed, n, fields, ts, vals in db.execute(sql, (meter, first, last)):
            names = split.get(fields)
            if names is None:
                names = split[fields] = tuple(fields.split(",")) if fields else ()
            out.append(Block(day, district, mixed, n, names, ts, vals))
        return out

    def _pack(
        self, measurement: Measurement, meters: list[str], days: tuple[int, int], cols: list[str]
    ) -> None:
        """Pack the full days [first, last] of these meters that have no block holding
        `cols` (a block keeps the fields it was packed for, plus any asked for since).

        Write transactions of ~`PACK_ROWS` rows (the writer's lock and connection): what
        is packed is the rows as committed, and ingest waits for one chunk at most. The
        district of each day is summed up inside SQLite: no Python object per row.
        """
        name = measurement.name
        numeric = measurement.numeric_fields()
        first, last = days
        present = f"SELECT day, fields FROM {name}_days WHERE meter = ? AND day BETWEEN ? AND ?"
        by_day = (
            f"SELECT ts / {DAY_MS}, count(*), count(district), min(district), max(district) "
            f"FROM {name} WHERE meter = ? AND ts BETWEEN ? AND ? GROUP BY 1"
        )
        insert = (
            f"INSERT OR REPLACE INTO {name}_days "
            "(meter, day, district, mixed, n, fields, ts, vals) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        upto = (
            f"INSERT INTO {name}_days_upto (one, day) VALUES (1, ?) "
            "ON CONFLICT (one) DO UPDATE SET day = max(day, excluded.day)"
        )
        whole = (
            f"SELECT count(*), count(district), min(district), max(district) FROM {name} "
            "WHERE meter = ? AND ts BETWEEN ? AND ?"
        )

        def one(db: sqlite3.Connection, meter: str) -> int:
            have = dict(db.execute(present, (meter, first, last)).fetchall())
            wanted = set(cols)
            missing = [
                d
                for d in range(first, last + 1)
                if d not in have or not wanted <= set(have[d].split(","))
            ]
            if not missing:
                return 0
            keep = wanted.union(*(have[d].split(",") for d in missing if d in have))
            fields = [f for f in numeric if f in keep]
            lo, hi = missing[0] * DAY_MS, (missing[-1] + 1) * DAY_MS - 1
            select = (
                f"SELECT {', '.join(['ts', *fields])} FROM {name} "
                "WHERE meter = ? AND ts BETWEEN ? AND ? ORDER BY ts"
            )
            rows = db.execute(select, (meter, lo, hi)).fetchall()
            # The district of each day, summed up inside SQLite; usually one
            # district for the whole span, and then no grouping by day at all.
            n, named, low, high = db.execute(whole, (meter, lo, hi)).fetchone()
            if named == 0 or (named == n and low == high):
                districts = {d: (1, 0 if named == 0 else 1, low, high) for d in missing}
            else:
                districts = {
                    int(r[0]): (r[1], r[2], r[3], r[4]) for r in db.execute(by_day, (meter, lo, hi))
                }
            db.executemany(insert, pack_day_blocks(meter, missing, rows, fields, districts))
            db.execute(upto, (missing[-1],))
            return len(rows) + 1

        self._pack_in_chunks(meters, one)

    def columns(
        self,
        measurement: Measurement,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        meter: str | None = None,
    ) -> dict[str, Columns]:
        """Any fields of every meter (or one) in [start, end], per meter, as `Columns`.

        Meter by meter along the primary key (meter, ts), in one read snapshot. For a
        measurement with column blocks (`column_blocked`: taxi heartbeats) the full UTC
        days of the window come from the blocks (a few blobs per meter, no Python object
        per point; days not packed yet are packed first, once), the partial days at its
        ends from the rows; otherwise every point from the rows.
        """
        name = measurement.name
        cols = [f for f in fields if f in self._cols[name]]
        first, last = -(-max(start_ms, 0) // DAY_MS), (end_ms + 1) // DAY_MS - 1
        days = (first, last) if column_blocked(measurement) and first <= last else None
        with self._read_lock:
            db = self._reader
            meters = [meter] if meter is not None else self._meters(db, measurement, None)
            todo = self._unpacked(name, meters, days) if days else []
        if todo and days:
            try:
                self._pack_columns(measurement, todo, days)
            except sqlite3.OperationalError as exc:  # e.g. locked by another writer: rows
                log.warning("telemetry store: days not packed (%s); reading the rows", exc)
        with self._read_lock:
            got = self._read_columns(meters, measurement, cols, start_ms, end_ms, days)
        return {
            m: Columns(
                c.ts_ms,
                {
                    f: c.values[f] if f in c.values else absent_column(f, len(c), measurement)
                    for f in fields
                },
            )
            for m, c in got.items()
        }

    def _read_columns(
        self,
        meters: list[str],
        measurement: Measurement,
        cols: list[str],
        start_ms: int,
        end_ms: int,
        days: tuple[int, int] | None,
    ) -> dict[str, Columns]:
        """Per meter: rows in [start, end] or, with `days`, column blocks for those days and
        rows around them (all rows if a day has no block: written since packed). Meters
        without a point are left out. Under `_read_lock`."""
        name = measurement.name
        text = [f for f in cols if measurement.fields.get(f) == "str"]
        select = (
            f"SELECT {', '.join(['ts', *cols])} FROM {name} "
            "WHERE meter = ? AND ts BETWEEN ? AND ? ORDER BY ts"
        )
        blocks_sql = (
            f"SELECT n, ts, vals, labels, codes FROM {name}_days "
            "WHERE meter = ? AND day BETWEEN ? AND ? ORDER BY day"
        )
        db = self._reader
        out: dict[str, Columns] = {}

        def rows(meter: str, lo: int, hi: int) -> Columns:
            got = db.execute(select, (meter, lo, hi)).fetchall() if lo <= hi else []
            return text_or_float_columns(got, cols, text)

        db.execute("BEGIN")  # one snapshot for every meter of the read
        try:
            for meter in meters:
                pieces: list[Columns] = []
                if days is not None:
                    first, last = days
                    blocks = db.execute(blocks_sql, (meter, first, last)).fetchall()
                    decoded = (
                        decode_columns(blocks, measurement, cols)
                        if len(blocks) == last - first + 1
                        else None
                    )
                    if decoded is not None:
                        pieces = [
                            rows(meter, start_ms, first * DAY_MS - 1),
                            decoded,
                            rows(meter, (last + 1) * DAY_MS, end_ms),
                        ]
                if not pieces:
                    pieces = [rows(meter, start_ms, end_ms)]
                pieces = [p for p in pieces if len(p)]
                if len(pieces) == 1:
                    out[meter] = pieces[0]
                elif pieces:
                    out[meter] = Columns(
                        np.concatenate([p.ts_ms for p in pieces]),
                        {c: np.concatenate([p.values[c] for p in pieces]) for c in cols},
                    )
        finally:
            db.execute("COMMIT")
        return out

    def _pack_columns(
        self, measurement: Measurement, meters: list[str], days: tuple[int, int]
    ) -> None:
        """Column blocks for the full days [first, last] of these meters that have none
        (every field of the measurement), in write transactions of ~`PACK_ROWS` rows as
        `_pack`: what is packed is the rows as committed."""
        name = measurement.name
        numeric, text = block_fields(measurement)
        first, last = days
        present = f"SELECT day FROM {name}_days WHERE meter = ? AND day BETWEEN ? AND ?"
        select = (
            f"SELECT {', '.join(['ts', *numeric, *text])} FROM {name} "
            "WHERE meter = ? AND ts BETWEEN ? AND ? ORDER BY ts"
        )
        insert = (
            f"INSERT OR REPLACE INTO {name}_days (meter, day, n, ts, vals, labels, codes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        upto = (
            f"INSERT INTO {name}_days_upto (one, day) VALUES (1, ?) "
            "ON CONFLICT (one) DO UPDATE SET day = max(day, excluded.day)"
        )

        def one(db: sqlite3.Connection, meter: str) -> int:
            have = {d for (d,) in db.execute(present, (meter, first, last))}
            missing = [d for d in range(first, last + 1) if d not in have]
            if not missing:
                return 0
            lo, hi = missing[0] * DAY_MS, (missing[-1] + 1) * DAY_MS - 1
            rows = db.execute(select, (meter, lo, hi)).fetchall()
            db.executemany(insert, pack_column_blocks(meter, missing, rows, numeric, text))
            db.execute(upto, (missing[-1],))
            return len(rows) + 1

        self._pack_in_chunks(meters, one)

    def _pack_in_chunks(
        self, meters: list[str], pack: Callable[[sqlite3.Connection, str], int]
    ) -> None:
        """`pack(db, meter)` (→ rows packed) for each meter, ~PACK_ROWS rows per write
        transaction: ingest waits for one such chunk at most."""
        queue = list(meters)
        while queue:
            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    packed = 0
                    while queue and packed < self._pack_rows:
                        packed += pack(db, queue.pop(0))
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise

    def meters(self, measurement: Measurement, district: str | None = None) -> list[str]:
        """Every meter with a point in the measurement, sorted; with a district, every meter
        that ever sent a point of that district (a meter that moved is listed in both)."""
        with self._read_lock:
            return self._meters(self._reader, measurement, district)

    def _meters(
        self, db: sqlite3.Connection, measurement: Measurement, district: str | None
    ) -> list[str]:
        name = measurement.name
        if district is not None:
            if name not in self._listed:
                raise ValueError(f"{name} has no district")
            sql = f"SELECT meter FROM {name}_meters WHERE district = ? ORDER BY meter"
            return [meter for (meter,) in db.execute(sql, (district,))]
        # Every meter: a skip scan of the primary key by hand, one seek per meter.
        out: list[str] = []
        (meter,) = db.execute(f"SELECT min(meter) FROM {name}").fetchone()
        while meter is not None:
            out.append(meter)
            (meter,) = db.execute(
                f"SELECT min(meter) FROM {name} WHERE meter > ?", (meter,)
            ).fetchone()
        return out

    def points(self, measurement: Measurement, start_ms: int, end_ms: int) -> list[MeterPoint]:
        """Every point in [start, end], by time."""
        cols = self._cols[measurement.name]
        sql = (
            f"SELECT {', '.join(cols)} FROM {measurement.name} WHERE ts BETWEEN ? AND ? ORDER BY ts"
        )
        with self._lock:
            rows = self._db.execute(sql, (start_ms, end_ms)).fetchall()
        out = []
        for row in rows:
            values = {c: v for c, v in zip(cols[2:], row[2:], strict=True) if v is not None}
            out.append(MeterPoint(row[0], row[1], values))
        return out

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Nothing to wait for: `write` returns after its transaction committed."""
        return True

    def health(self) -> StoreHealth:
        """Writable unless the last write failed."""
        return StoreHealth(writable=not self._error, backend=self.backend, detail=self._error)

    def close(self) -> None:
        """Close the database."""
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
