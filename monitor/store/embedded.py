"""The embedded telemetry store: one SQLite file, one table per measurement.

Same semantics as the InfluxDB backend: a point is keyed by meter and its key
columns, so a duplicate overwrites itself (INSERT OR REPLACE) instead of
counting twice. A batch is one transaction; `write` returns after commit.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from monitor.metrics import Metrics
from monitor.ports import MeterPoint, Point, Series, StoreHealth, meter_series
from monitor.schema import MEASUREMENTS, Measurement, Record

log = logging.getLogger(__name__)

# The file layout this code writes (PRAGMA user_version); older files are migrated on open.
LAYOUT = 2

_SQL_TYPES = {"float": "REAL", "int": "INTEGER", "str": "TEXT"}


def _columns(m: Measurement) -> list[str]:
    cols = ["meter", "ts"]
    cols += [t for t in m.tags]
    cols += [f for f in m.fields if f not in cols]
    return cols


def _ddl(m: Measurement) -> str:
    types = {"meter": "TEXT NOT NULL", "ts": "INTEGER NOT NULL", "district": "TEXT", "code": "TEXT"}
    types |= {f: _SQL_TYPES[t] for f, t in m.fields.items()}
    cols = ", ".join(f"{c} {types[c]}" for c in _columns(m))
    key = ", ".join(("meter", *m.key))
    return f"CREATE TABLE IF NOT EXISTS {m.name} ({cols}, PRIMARY KEY ({key})) WITHOUT ROWID"


# Per measurement: whether `district` follows meter and ts, then the columns taken from values.
_ROW_SHAPE = {
    name: ("district" in m.tags, tuple(c for c in _columns(m)[2:] if c != "district"))
    for name, m in MEASUREMENTS.items()
}


def _row(m: Measurement, cols: list[str], r: Record) -> tuple[object, ...]:
    """The row of `cols` (= `_columns(m)`): meter, ts, district if a tag, values or None."""
    with_district, rest = _ROW_SHAPE[m.name]
    if with_district:
        return (r.meter, r.ts_ms, r.district or None, *map(r.values.get, rest))
    return (r.meter, r.ts_ms, *map(r.values.get, rest))


class EmbeddedStore:
    """SQLite telemetry store under MONITOR_DATA_DIR.

    store = EmbeddedStore(Path("data/telemetry.sqlite"), Metrics())
    store.write([record]); store.latest(ELEC_READING, "m1")
    """

    backend = "embedded"

    def __init__(self, path: Path, metrics: Metrics, synchronous: str = "NORMAL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit survives a killed process (the case that matters
        # for ack-after-store); FULL also survives power loss at ~2x the cost.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._cols = {name: _columns(m) for name, m in MEASUREMENTS.items()}
        self._listed = {name for name, m in MEASUREMENTS.items() if "district" in m.tags}
        self._migrate()
        self._inserts = {
            name: f"INSERT OR REPLACE INTO {name} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
            for name, c in self._cols.items()
        }
        self._error = ""
        # Bulk reads (`series`) run on their own connection: under WAL they see committed
        # data as of their start and neither block nor wait for the writer's lock.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()

    def _migrate(self) -> None:
        """Create the tables; bring a file of an older layout (PRAGMA user_version) up to date.

        Layout 2: beside each table with a district tag, `<table>_meters (district, meter)`
        lists the meters that ever sent a point of that district, kept by `write` (INSERT OR
        IGNORE of the batch's pairs: a probe, rarely a page write). `series` reads a
        district meter by meter along the primary key (meter, ts), so the (district, ts)
        index of layout 0 (one table lookup per row, a sort, and an insert per row spread
        over every district) and the (district, meter) index of layout 1 are dropped.
        Opening an older file fills the list from the rows once (one scan).
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            for m in MEASUREMENTS.values():
                db.execute(_ddl(m))
                db.execute(f"CREATE INDEX IF NOT EXISTS {m.name}_time ON {m.name} (ts)")
                if "district" not in m.tags:
                    continue
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {m.name}_meters (district TEXT NOT NULL, "
                    "meter TEXT NOT NULL, PRIMARY KEY (district, meter)) WITHOUT ROWID"
                )
                if version < 2:
                    log.info("telemetry store: listing the meters of each district (%s)", m.name)
                    db.execute(
                        f"INSERT OR IGNORE INTO {m.name}_meters (district, meter) "
                        f"SELECT DISTINCT district, meter FROM {m.name} WHERE district <> ''"
                    )
                    db.execute(f"DROP INDEX IF EXISTS {m.name}_district")
                    db.execute(f"DROP INDEX IF EXISTS {m.name}_district_meter")
            if version < LAYOUT:
                db.execute(f"PRAGMA user_version = {LAYOUT}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def write(self, records: Sequence[Record]) -> None:
        """Insert a batch in one transaction."""
        groups: dict[str, list[tuple[object, ...]]] = defaultdict(list)
        pairs: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for r in records:
            name = r.measurement.name
            groups[name].append(_row(r.measurement, self._cols[name], r))
            if r.district and name in self._listed:
                pairs[name].add((r.district, r.meter))
        with self._lock:
            try:
                self._db.execute("BEGIN")
                for name, rows in groups.items():
                    self._db.executemany(self._inserts[name], rows)
                for name, listed in pairs.items():
                    self._db.executemany(
                        f"INSERT OR IGNORE INTO {name}_meters (district, meter) VALUES (?, ?)",
                        sorted(listed),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._error = str(exc)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        self._error = ""
        for name, rows in groups.items():
            self._metrics.written.labels(measurement=name).inc(len(rows))

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

        One query per meter along the primary key (meter, ts): the rows come in key
        order with no per-row index lookup and no sort, and only (ts, fields) travel to
        Python. The meters come from the district's list (`meters`).
        """
        name = measurement.name
        cols = [f for f in fields if f in self._cols[name]]
        sql = (
            f"SELECT {', '.join(['ts', *cols])} FROM {name} WHERE meter = ? AND ts BETWEEN ? AND ?"
        )
        if district is not None:
            # `+district`: a filter on the meter's key range, never an index to use.
            sql += " AND +district = ?"
        sql += " ORDER BY ts"
        out: dict[str, Series] = {}
        with self._read_lock:
            db = self._reader
            db.execute("BEGIN")  # one snapshot for every meter of the read
            try:
                for meter in self._meters(db, measurement, district):
                    args: tuple[object, ...] = (meter, start_ms, end_ms)
                    rows = db.execute(sql, (*args, district) if district is not None else args)
                    got = rows.fetchall()
                    if got:
                        out[meter] = meter_series(got, cols)
            finally:
                db.execute("COMMIT")
        return out

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

    def health(self) -> StoreHealth:
        """Writable unless the last write failed."""
        return StoreHealth(writable=not self._error, backend=self.backend, detail=self._error)

    def close(self) -> None:
        """Close the database."""
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
