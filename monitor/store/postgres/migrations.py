"""The PostgreSQL schema as numbered migrations, applied once each, in order.

A migration is never edited once released: a change is a new one at the end. Workers
starting together migrate one at a time (the `schema_migrations` table is locked for
the duration), so the second finds the work done. JSON bodies are kept as `text`,
byte for byte what the service wrote (the same bytes the embedded store keeps). Every
text column is `COLLATE "C"`: ids order and compare byte by byte, as in SQLite and
keyset cursors expect, whatever locale the database was created with.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors

# Wall-clock text stamps as the embedded store writes them (to the second, UTC, 'Z').
_NOW_TEXT = """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


@dataclass(frozen=True)
class Migration:
    """One step of the schema."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "state: registry, meters seen, decisions, districts, lot samples, taxi ledger",
        (
            f"""CREATE TABLE registry (
                meter_id text COLLATE "C" PRIMARY KEY, kind text COLLATE "C" NOT NULL, role text COLLATE "C", district text COLLATE "C",
                lot text COLLATE "C", manufacturer text COLLATE "C", model text COLLATE "C", accuracy_class text COLLATE "C",
                installed_on text COLLATE "C", verified_on text COLLATE "C", period_years integer, plate text COLLATE "C",
                due_on text COLLATE "C", updated_at text COLLATE "C" NOT NULL DEFAULT {_NOW_TEXT})""",
            "CREATE INDEX registry_district ON registry (district)",
            "CREATE INDEX registry_lot ON registry (lot)",
            "CREATE INDEX registry_due ON registry (due_on)",
            "CREATE INDEX registry_kind ON registry (kind, meter_id)",
            # Moves with every registry write: ingest reloads its meter → district map.
            "CREATE SEQUENCE registry_version",
            """CREATE TABLE seen (
                meter_id text COLLATE "C" PRIMARY KEY, kind text COLLATE "C" NOT NULL, district text COLLATE "C",
                first_ts bigint NOT NULL, last_ts bigint NOT NULL, messages bigint NOT NULL,
                last_received double precision NOT NULL)""",
            # One row per flush of a worker's meters seen: a flush retried after its
            # commit was lost in transit is recognised and not counted twice.
            """CREATE TABLE seen_flushes (
                writer text COLLATE "C" NOT NULL, seq bigint NOT NULL,
                at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (writer, seq))""",
            """CREATE TABLE district_mismatches (
                meter_id text COLLATE "C" NOT NULL, topic_district text COLLATE "C" NOT NULL,
                registered_district text COLLATE "C" NOT NULL, messages bigint NOT NULL,
                first_ts bigint NOT NULL, last_ts bigint NOT NULL,
                last_received double precision NOT NULL,
                PRIMARY KEY (meter_id, topic_district))""",
            """CREATE TABLE decisions (
                scope text COLLATE "C" NOT NULL, subject text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
                decision text COLLATE "C" NOT NULL, state text COLLATE "C" NOT NULL, as_of text COLLATE "C" NOT NULL,
                rules_version text COLLATE "C" NOT NULL, body text COLLATE "C" NOT NULL,
                PRIMARY KEY (scope, subject))""",
            "CREATE INDEX decisions_by_decision ON decisions (scope, decision, subject)",
            """CREATE TABLE districts (
                district text COLLATE "C" PRIMARY KEY, as_of text COLLATE "C" NOT NULL, body text COLLATE "C" NOT NULL,
                gates_passed boolean NOT NULL)""",
            """CREATE TABLE sample_results (
                lot text COLLATE "C" NOT NULL, meter text COLLATE "C" NOT NULL, error_pct double precision,
                passed boolean NOT NULL, PRIMARY KEY (lot, meter))""",
            f"""CREATE TABLE workorders (
                id bigserial PRIMARY KEY, meter text COLLATE "C" NOT NULL, start_ms bigint NOT NULL,
                end_ms bigint NOT NULL, reason text COLLATE "C" NOT NULL,
                created_at text COLLATE "C" NOT NULL DEFAULT {_NOW_TEXT},
                UNIQUE (meter, start_ms, end_ms, reason))""",
            f"""CREATE TABLE tariffs (
                version text COLLATE "C" PRIMARY KEY, body text COLLATE "C" NOT NULL,
                effective_from_ms bigint NOT NULL, deadline_ms bigint NOT NULL,
                meters text COLLATE "C" NOT NULL, created_at text COLLATE "C" NOT NULL DEFAULT {_NOW_TEXT},
                seq bigserial)""",
            # A meter's estimated error per UTC day of evaluation (the day's last pass).
            """CREATE TABLE error_history (
                meter_id text COLLATE "C" NOT NULL, day text COLLATE "C" NOT NULL,
                as_of text COLLATE "C" NOT NULL, state text COLLATE "C" NOT NULL,
                error_pct double precision, low_pct double precision, high_pct double precision,
                PRIMARY KEY (meter_id, day))""",
        ),
    ),
    Migration(
        2,
        "alerts",
        (
            """CREATE TABLE alerts (
                id bigserial PRIMARY KEY, key text COLLATE "C" NOT NULL UNIQUE, rule text COLLATE "C" NOT NULL,
                severity text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL, meter text COLLATE "C", lot text COLLATE "C",
                district text COLLATE "C", message text COLLATE "C" NOT NULL, first_seen bigint NOT NULL,
                last_seen bigint NOT NULL, count bigint NOT NULL, status text COLLATE "C" NOT NULL,
                evidence text COLLATE "C" NOT NULL, history text COLLATE "C" NOT NULL)""",
            "CREATE INDEX alerts_status ON alerts (status, severity)",
            "CREATE INDEX alerts_meter ON alerts (meter)",
            "CREATE INDEX alerts_unresolved ON alerts (last_seen) WHERE status <> 'resolved'",
        ),
    ),
    Migration(
        3,
        "notification outbox, group buffers, escalation timers",
        (
            """CREATE TABLE notify_outbox (
                id bigserial PRIMARY KEY, key text COLLATE "C" NOT NULL UNIQUE, receiver text COLLATE "C" NOT NULL,
                route text COLLATE "C" NOT NULL, action text COLLATE "C" NOT NULL, alerts text COLLATE "C" NOT NULL,
                state text COLLATE "C" NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0,
                next_at double precision NOT NULL, created_at double precision NOT NULL,
                finished_at double precision, last_error text COLLATE "C", claimed_by text COLLATE "C",
                claim_until double precision)""",
            "CREATE INDEX notify_outbox_due ON notify_outbox (next_at, id) WHERE state = 'pending'",
            """CREATE TABLE notify_grouped (
                route text COLLATE "C" NOT NULL, receiver text COLLATE "C" NOT NULL, action text COLLATE "C" NOT NULL,
                alert_id bigint NOT NULL, member text COLLATE "C" NOT NULL, alert text COLLATE "C" NOT NULL,
                at double precision NOT NULL, PRIMARY KEY (route, receiver, action, alert_id))""",
            """CREATE TABLE notify_escalations (
                route text COLLATE "C" NOT NULL, alert_id bigint NOT NULL, armed text COLLATE "C" NOT NULL,
                alert text COLLATE "C" NOT NULL, due_at double precision, step integer NOT NULL DEFAULT 0,
                PRIMARY KEY (route, alert_id))""",
            "CREATE INDEX notify_escalations_alert ON notify_escalations (alert_id)",
        ),
    ),
    Migration(
        4,
        "evaluation passes: partitions with leases, staged results",
        (
            """CREATE TABLE passes (
                id bigserial PRIMARY KEY, key text COLLATE "C" UNIQUE, as_of_ms bigint NOT NULL,
                rules_version text COLLATE "C" NOT NULL,
                status text COLLATE "C" NOT NULL DEFAULT 'running',
                created_by text COLLATE "C" NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                finished_at timestamptz, summary text COLLATE "C", error text COLLATE "C")""",
            "CREATE INDEX passes_running ON passes (id) WHERE status = 'running'",
            """CREATE TABLE pass_partitions (
                pass_id bigint NOT NULL REFERENCES passes ON DELETE CASCADE,
                stage integer NOT NULL, name text COLLATE "C" NOT NULL,
                items text COLLATE "C" NOT NULL, status text COLLATE "C" NOT NULL DEFAULT 'todo',
                owner text COLLATE "C", lease_until timestamptz,
                attempts integer NOT NULL DEFAULT 0, done_by text COLLATE "C",
                error text COLLATE "C", PRIMARY KEY (pass_id, stage, name))""",
            """CREATE TABLE pass_decisions (
                pass_id bigint NOT NULL REFERENCES passes ON DELETE CASCADE,
                scope text COLLATE "C" NOT NULL, subject text COLLATE "C" NOT NULL,
                ord text COLLATE "C" NOT NULL, src text COLLATE "C" NOT NULL,
                kind text COLLATE "C" NOT NULL, decision text COLLATE "C" NOT NULL,
                state text COLLATE "C" NOT NULL, as_of text COLLATE "C" NOT NULL,
                rules_version text COLLATE "C" NOT NULL, body text COLLATE "C" NOT NULL,
                alerting boolean NOT NULL, PRIMARY KEY (pass_id, scope, subject))""",
            """CREATE TABLE pass_districts (
                pass_id bigint NOT NULL REFERENCES passes ON DELETE CASCADE,
                district text COLLATE "C" NOT NULL, body text COLLATE "C" NOT NULL,
                gates_passed boolean NOT NULL, gate_failed boolean NOT NULL,
                reasons text COLLATE "C" NOT NULL, alerting boolean NOT NULL,
                PRIMARY KEY (pass_id, district))""",
            # Singleton jobs of the cluster (offline check, mismatch check): one run per slot.
            """CREATE TABLE job_runs (
                job text COLLATE "C" NOT NULL, slot text COLLATE "C" NOT NULL,
                owner text COLLATE "C" NOT NULL, at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (job, slot))""",
        ),
    ),
    Migration(
        5,
        "registry regions and feeder topology, alert occurrences, the audit log",
        (
            'ALTER TABLE registry ADD COLUMN region text COLLATE "C"',
            'ALTER TABLE registry ADD COLUMN feeder_branch text COLLATE "C"',
            "ALTER TABLE registry ADD COLUMN feeder_distance_m double precision",
            "CREATE INDEX registry_region ON registry (region)",
            # A staged decision's events (its reasons' occurrences), which alerts count.
            'ALTER TABLE pass_decisions ADD COLUMN occurrences text COLLATE "C"',
            """CREATE TABLE alert_occurrences (
                alert_id bigint NOT NULL, occurrence text COLLATE "C" NOT NULL,
                at_ms bigint NOT NULL, PRIMARY KEY (alert_id, occurrence))""",
            """CREATE TABLE audit_log (
                seq bigint PRIMARY KEY, at text COLLATE "C" NOT NULL,
                body text COLLATE "C" NOT NULL, hash text COLLATE "C" NOT NULL)""",
            "CREATE INDEX audit_log_at ON audit_log (at)",
            # The last purged record ('anchor') and the newest ('head'): appenders lock the
            # head row, so it exists from the start (seq 0: no record yet).
            """CREATE TABLE audit_marks (
                name text COLLATE "C" PRIMARY KEY, seq bigint NOT NULL,
                hash text COLLATE "C" NOT NULL)""",
            f"INSERT INTO audit_marks VALUES ('head', 0, '{'0' * 64}')",
            """CREATE FUNCTION audit_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'UPDATE' THEN
                    RAISE EXCEPTION 'audit records are never changed';
                END IF;
                IF old.seq > coalesce(
                        (SELECT seq FROM audit_marks WHERE name = 'anchor'), 0) THEN
                    RAISE EXCEPTION 'audit records are only purged, oldest first';
                END IF;
                RETURN old;
            END $$""",
            """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
                FOR EACH ROW EXECUTE FUNCTION audit_log_guard()""",
            """CREATE FUNCTION audit_marks_forward() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF new.seq < old.seq THEN
                    RAISE EXCEPTION 'the audit anchor and head only move forward';
                END IF;
                RETURN new;
            END $$""",
            """CREATE TRIGGER audit_marks_forward BEFORE UPDATE ON audit_marks
                FOR EACH ROW EXECUTE FUNCTION audit_marks_forward()""",
        ),
    ),
    Migration(
        6,
        "shadow rules and promotions",
        (
            """CREATE TABLE rules_texts (
                digest text COLLATE "C" PRIMARY KEY, text text COLLATE "C" NOT NULL,
                kept_at timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE rules_upload (
                id integer PRIMARY KEY CHECK (id = 1), text text COLLATE "C" NOT NULL,
                at timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE rules_shadow (
                id integer PRIMARY KEY CHECK (id = 1), body text COLLATE "C" NOT NULL)""",
            """CREATE TABLE rules_promotions (
                seq bigserial PRIMARY KEY, body text COLLATE "C" NOT NULL,
                to_digest text COLLATE "C" NOT NULL REFERENCES rules_texts,
                at timestamptz NOT NULL DEFAULT now())""",
        ),
    ),
    Migration(
        7,
        "changed days and day summaries (incremental passes)",
        (
            # One row: the newest mark's number. A marker takes the next under the row's
            # lock, held to its commit, so numbers become visible in order (a reader that
            # saw n has seen every mark <= n).
            "CREATE TABLE day_mark_seq (id integer PRIMARY KEY CHECK (id = 1), value bigint)",
            "INSERT INTO day_mark_seq VALUES (1, 0)",
            """CREATE TABLE day_marks (
                district text COLLATE "C" NOT NULL, day integer NOT NULL, seq bigint NOT NULL,
                PRIMARY KEY (district, day))""",
            """CREATE TABLE day_summaries (
                district text COLLATE "C" NOT NULL, day integer NOT NULL, upto bigint NOT NULL,
                body bytea NOT NULL, PRIMARY KEY (district, day))""",
        ),
    ),
    Migration(
        8,
        "day summaries and marks by day (each pass forgets the days before its window)",
        (
            "CREATE INDEX day_summaries_by_day ON day_summaries (day)",
            "CREATE INDEX day_marks_by_day ON day_marks (day)",
        ),
    ),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version


def migrate(conn: psycopg.Connection[Any], upto: int | None = None) -> list[int]:
    """Apply the migrations not applied yet (up to `upto`); returns the versions applied."""
    _create_ledger(conn)
    applied: list[int] = []
    with conn.transaction():
        # Held to the end of the transaction: a second worker waits here, then finds the
        # versions recorded and applies nothing.
        conn.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
        done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
        for m in MIGRATIONS:
            if m.version in done or (upto is not None and m.version > upto):
                continue
            for sql in m.statements:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name)
            )
            applied.append(m.version)
    return applied


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    """The versions recorded in the database, in order."""
    rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [int(r[0]) for r in rows]


def _create_ledger(conn: psycopg.Connection[Any]) -> None:
    sql = """CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY, name text COLLATE "C" NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())"""
    # Two workers may create it at the same instant (IF NOT EXISTS is not atomic against
    # a concurrent creation): the loser's error says it exists now, all we need. Which
    # error depends on where the race is lost: the table's row type ("type … already
    # exists", DuplicateObject), its catalogue row (UniqueViolation) or the table.
    with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateObject):
        conn.execute(sql)
