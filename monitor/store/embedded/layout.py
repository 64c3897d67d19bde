"""The embedded store's tables and their layout versions (PRAGMA user_version), with the
migration that brings an older file up to date."""

from __future__ import annotations

import contextlib
import logging
import sqlite3

from monitor.core.schema import MEASUREMENTS, Measurement, Record

log = logging.getLogger(__name__)

# The file layout this code writes (PRAGMA user_version); older files are migrated on open.
LAYOUT = 7


SQL_TYPES = {"float": "REAL", "int": "INTEGER", "str": "TEXT"}


def table_columns(m: Measurement) -> list[str]:
    cols = ["meter", "ts"]
    cols += [t for t in m.tags]
    cols += [f for f in m.fields if f not in cols]
    return cols


def table_ddl(m: Measurement) -> str:
    types = {"meter": "TEXT NOT NULL", "ts": "INTEGER NOT NULL", "district": "TEXT", "code": "TEXT"}
    types |= {f: SQL_TYPES[t] for f, t in m.fields.items()}
    cols = ", ".join(f"{c} {types[c]}" for c in table_columns(m))
    key = ", ".join(("meter", *m.key))
    return f"CREATE TABLE IF NOT EXISTS {m.name} ({cols}, PRIMARY KEY ({key})) WITHOUT ROWID"


# Per measurement: whether `district` follows meter and ts, then the columns taken from values.
ROW_SHAPE = {
    name: ("district" in m.tags, tuple(c for c in table_columns(m)[2:] if c != "district"))
    for name, m in MEASUREMENTS.items()
}


def record_row(m: Measurement, cols: list[str], r: Record) -> tuple[object, ...]:
    """The row of `cols` (= `table_columns(m)`): meter, ts, district if a tag, values or None."""
    with_district, rest = ROW_SHAPE[m.name]
    if with_district:
        return (r.meter, r.ts_ms, r.district or None, *map(r.values.get, rest))
    return (r.meter, r.ts_ms, *map(r.values.get, rest))


def day_blocked(m: Measurement) -> bool:
    """Measurements `series` reads through day blocks: one point per (meter, ts), a district."""
    return m.key == ("ts",) and "district" in m.tags


def column_blocked(m: Measurement) -> bool:
    """Measurements `columns` reads through column blocks: one point per (meter, ts), no
    district (taxi heartbeats; see `EmbeddedStore._migrate`, layout 7)."""
    return m.key == ("ts",) and "district" not in m.tags


def column_block_tables(m: Measurement) -> list[str]:
    """The column blocks of a measurement and the last day they may hold."""
    t = m.name
    return [
        f"CREATE TABLE IF NOT EXISTS {t}_days (meter TEXT NOT NULL, day INTEGER NOT NULL, "
        "n INTEGER NOT NULL, ts BLOB NOT NULL, vals BLOB NOT NULL, labels TEXT NOT NULL, "
        "codes BLOB NOT NULL, PRIMARY KEY (meter, day)) WITHOUT ROWID",
        f"CREATE TABLE IF NOT EXISTS {t}_days_upto "
        "(one INTEGER PRIMARY KEY CHECK (one = 1), day INTEGER NOT NULL)",
    ]


def day_block_tables(m: Measurement) -> list[str]:
    """The day blocks of a measurement and the last day they may hold (`write` drops the
    blocks of the days it writes to, up to that day)."""
    t = m.name
    return [
        f"CREATE TABLE IF NOT EXISTS {t}_days (meter TEXT NOT NULL, day INTEGER NOT NULL, "
        "district TEXT, mixed INTEGER NOT NULL, n INTEGER NOT NULL, fields TEXT NOT NULL, "
        "ts BLOB NOT NULL, vals BLOB NOT NULL, PRIMARY KEY (meter, day)) WITHOUT ROWID",
        f"CREATE TABLE IF NOT EXISTS {t}_days_upto "
        "(one INTEGER PRIMARY KEY CHECK (one = 1), day INTEGER NOT NULL)",
    ]


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables; bring a file of an older layout (PRAGMA user_version) up to date.

    Layout 2: beside each table with a district tag, `<table>_meters (district, meter)`
    lists the meters that ever sent a point of that district, kept by `write` (INSERT OR
    IGNORE of the batch's pairs: a probe, rarely a page write). `series` reads a
    district meter by meter along the primary key (meter, ts), so the (district, ts)
    index of layout 0 (one table lookup per row, a sort, and an insert per row spread
    over every district) and the (district, meter) index of layout 1 are dropped.
    Opening an older file fills the list from the rows once (one scan).

    Layout 3: `<table>_days` keeps, per (meter, UTC day), the day's points packed as
    numpy arrays (ts int64, fields float64), built by `series` the first time it reads
    a full day; `write` drops the blocks of the days it writes to, so a block is
    always the rows as they are (`<table>_days_upto`, the last day packed, spares live
    points any probe). Layout 4: a block names the fields it holds. Layout 5: blocks
    are dropped by `write`, no longer by triggers (~6 µs a row). Every telemetry
    write must go through `write`. Layout 6: a block's values are point-major, so a
    meter's days join as bytes. Older blocks are dropped (a cache: repacked on read).
    Layout 7: measurements without a district keyed by time (taxi heartbeats) get
    column blocks, `<table>_days` (meter, day, n, ts, vals, labels, codes): every
    field, text ones as codes into the day's distinct values; `columns` reads the full
    days of a window from them, packing days not packed yet, and `write` drops them
    as it drops day blocks.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        for m in MEASUREMENTS.values():
            db.execute(table_ddl(m))
            db.execute(f"CREATE INDEX IF NOT EXISTS {m.name}_time ON {m.name} (ts)")
            if day_blocked(m):
                if version < 6:  # blocks of layouts 3-5 differ: a cache, dropped
                    db.execute(f"DROP TABLE IF EXISTS {m.name}_days")
                if version < 5:  # layouts 3-4 dropped blocks by triggers (~6 µs a row)
                    for event in ("insert", "delete", "update"):
                        db.execute(f"DROP TRIGGER IF EXISTS {m.name}_days_on_{event}")
                for ddl in day_block_tables(m):
                    db.execute(ddl)
            if column_blocked(m):
                for ddl in column_block_tables(m):
                    db.execute(ddl)
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
