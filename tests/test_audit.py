"""The audit log: the hash chain shows an edited, removed or inserted record at its first
broken link (`monitor audit verify`), purging old records keeps it whole, and the SQLite
store refuses changes by trigger."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from monitor.cli import main
from monitor.core.audit import GENESIS, ChainCheck
from monitor.core.ports import AuditEntry, AuditLog
from monitor.store.audit import SqliteAudit
from monitor.store.postgres.audit import PostgresAudit
from monitor.store.postgres.db import Database

REPO = Path(__file__).resolve().parent.parent


def _log(data: Path, n: int = 5) -> SqliteAudit:
    audit = SqliteAudit(data / "state.sqlite", "9.9.9")
    for i in range(n):
        audit.append(
            AuditEntry("inspector.wang", "authority", "alert.ack", f"alert:{i}", {"after": "ack"})
        )
    return audit


def _verify(data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    env = {"MONITOR_CONFIG": str(REPO / "config"), "MONITOR_DATA_DIR": str(data)}
    code = main(["audit", "verify"], env)
    out = capsys.readouterr()
    return code, out.out + out.err


def _tamper(data: Path, sql: str, *args: object) -> None:
    """What someone with the file open in another program could do: triggers off first."""
    db = sqlite3.connect(data / "state.sqlite")
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("DROP TRIGGER audit_log_no_delete")
    db.execute(sql, args)
    db.commit()
    db.close()


def test_records_chain_and_carry_who_what_and_the_version(tmp_path: Path) -> None:
    audit = _log(tmp_path, 3)
    rows = audit.rows(0, 10)
    bodies = [json.loads(r.body) for r in rows]
    assert [b["seq"] for b in bodies] == [1, 2, 3]
    assert bodies[0]["prev"] == GENESIS
    assert [b["prev"] for b in bodies[1:]] == [r.hash for r in rows[:-1]]
    assert bodies[0]["actor"] == "inspector.wang" and bodies[0]["role"] == "authority"
    assert bodies[0]["software_version"] == "9.9.9" and bodies[0]["at"].endswith("Z")
    check = ChainCheck(audit.anchor())
    assert all(check.feed(r) is None for r in rows) and check.finish(audit.head()) is None
    audit.close()


def test_an_intact_chain_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path).close()
    code, out = _verify(tmp_path, capsys)
    assert code == 0 and "intact: 5 record(s)" in out


def test_the_store_refuses_changes(tmp_path: Path) -> None:
    audit = _log(tmp_path, 2)
    db = sqlite3.connect(tmp_path / "state.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="never changed"):
        db.execute("UPDATE audit_log SET body = '{}' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="only purged"):
        db.execute("DELETE FROM audit_log WHERE seq = 2")
    db.close()
    audit.close()


def test_an_edited_record_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = _log(tmp_path)
    body = json.loads(audit.rows(2, 1)[0].body)
    audit.close()
    body["actor"] = "someone.else"
    _tamper(tmp_path, "UPDATE audit_log SET body = ? WHERE seq = 3", json.dumps(body))
    code, out = _verify(tmp_path, capsys)
    assert code == 1 and "record 3" in out and "edited" in out


def test_an_edit_with_a_fresh_hash_breaks_the_next_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    audit = _log(tmp_path)
    body = json.loads(audit.rows(1, 1)[0].body)
    audit.close()
    body["detail"] = {"after": "resolved"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    _tamper(tmp_path, "UPDATE audit_log SET body = ?, hash = ? WHERE seq = 2", text, digest)
    code, out = _verify(tmp_path, capsys)
    assert code == 1 and "record 3" in out and "does not chain" in out


def test_a_deleted_record_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path).close()
    _tamper(tmp_path, "DELETE FROM audit_log WHERE seq = 2")
    code, out = _verify(tmp_path, capsys)
    assert code == 1 and "record 2" in out and "missing" in out


def test_a_deleted_newest_record_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(tmp_path).close()
    _tamper(tmp_path, "DELETE FROM audit_log WHERE seq = 5")
    code, out = _verify(tmp_path, capsys)
    assert code == 1 and "record 5" in out and "newest records deleted" in out


def test_purging_old_records_keeps_the_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = iter([1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 6_000.0])
    audit = SqliteAudit(tmp_path / "state.sqlite", "1", clock=lambda: next(clock))
    for i in range(4):
        audit.append(AuditEntry("a", "operator", "workorder.add", f"meter:{i}", {}))
    assert audit.purge("1970-01-01T00:41:00.000Z") == 2  # records at 1 000 s and 2 000 s
    remaining = [json.loads(r.body) for r in audit.rows(0, 10)]
    assert [r["seq"] for r in remaining] == [3, 4, 5]
    assert remaining[-1]["action"] == "audit.purge" and remaining[-1]["detail"]["purged"] == 2
    audit.close()
    code, out = _verify(tmp_path, capsys)
    assert code == 0 and "intact: 3 record(s)" in out


# --- both stores: the embedded file and the cluster's PostgreSQL ------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], AuditLog]]:
    """New handles on one audit log (each its own connection: another worker)."""
    opened: list[AuditLog] = []
    databases: list[Database] = []
    url: str | None = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")

    def handle() -> AuditLog:
        if url is None:
            opened.append(SqliteAudit(tmp_path / "state.sqlite", "9.9.9"))
        else:
            databases.append(Database(url))
            opened.append(PostgresAudit(databases[-1], "9.9.9"))
        return opened[-1]

    yield handle
    for log in opened:
        log.close()
    for db in databases:
        db.close()


def _entry(i: int, actor: str = "inspector.wang") -> AuditEntry:
    return AuditEntry(actor, "authority", "alert.ack", f"alert:{i}", {"after": "ack"})


def _check(audit: AuditLog) -> ChainCheck:
    anchor = audit.anchor()
    check = ChainCheck(anchor)
    rows = audit.rows(anchor.seq if anchor else 0, 100_000)
    for row in rows:
        check.feed(row)
    check.finish(audit.head())
    return check


def test_workers_appending_at_once_make_one_chain(audit_at: Callable[[], AuditLog]) -> None:
    # Two workers, each its own connection, appending as fast as they can: every record
    # must chain to the one before it, whichever worker wrote it.
    logs = [audit_at(), audit_at()]
    errors: list[BaseException] = []
    go = threading.Barrier(2)
    spans: list[tuple[float, float]] = [(0.0, 0.0), (0.0, 0.0)]

    def append(log: AuditLog, actor: str) -> None:
        try:
            go.wait()
            start = time.monotonic()
            for i in range(60):
                log.append(_entry(i, actor))
            spans[int(actor[-1])] = (start, time.monotonic())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=append, args=(log, f"worker-{n}")) for n, log in enumerate(logs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check = _check(audit_at())
    assert check.broken is None and check.checked == 120
    actors = [json.loads(r.body)["actor"] for r in logs[0].rows(0, 200)]
    assert actors.count("worker-0") == actors.count("worker-1") == 60
    # Both were appending at the same time (else this proves less than it says).
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1


def test_a_chain_written_by_one_worker_is_continued_by_another(
    audit_at: Callable[[], AuditLog],
) -> None:
    first, second = audit_at(), audit_at()
    first.append(_entry(1))
    row = second.append(_entry(2))
    assert json.loads(row.body)["prev"] == first.rows(0, 1)[0].hash and row.seq == 2
    assert first.head() == second.head() == (2, row.hash)
    assert _check(first).broken is None


def test_purging_keeps_the_chain_in_either_store(audit_at: Callable[[], AuditLog]) -> None:
    audit = audit_at()
    for i in range(3):
        audit.append(_entry(i))
    assert audit.purge("9999-01-01T00:00:00.000Z") == 3
    anchor = audit.anchor()
    assert anchor is not None and anchor.seq == 3
    [purge] = [json.loads(r.body) for r in audit.rows(0, 10)]
    assert purge["seq"] == 4 and purge["action"] == "audit.purge"
    later = audit_at().append(_entry(9))
    assert later.seq == 5
    check = _check(audit_at())
    assert check.broken is None and check.checked == 2


def test_the_postgres_log_refuses_changes(postgres_url: str) -> None:
    db = Database(postgres_url)
    audit = PostgresAudit(db, "9.9.9")
    for i in range(2):
        audit.append(_entry(i))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="never changed"):
            conn.execute("UPDATE audit_log SET body = '{}' WHERE seq = 1")
        with pytest.raises(psycopg.errors.RaiseException, match="only purged"):
            conn.execute("DELETE FROM audit_log WHERE seq = 2")
        with pytest.raises(psycopg.errors.RaiseException, match="only move forward"):
            conn.execute("UPDATE audit_marks SET seq = 1 WHERE name = 'head'")
    db.close()


def test_audit_verify_walks_the_clusters_log(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = Database(postgres_url)
    audit = PostgresAudit(db, "9.9.9")
    for i in range(4):
        audit.append(_entry(i))
    env = {
        "MONITOR_CONFIG": str(REPO / "config"),
        "MONITOR_DATA_DIR": str(tmp_path),
        "MONITOR_STATE_URL": postgres_url,
    }
    assert main(["audit", "verify"], env) == 0
    assert "intact: 4 record(s)" in capsys.readouterr().out
    assert not (tmp_path / "state.sqlite").exists(), "verified a local file, not the cluster's"
    body = json.loads(audit.rows(2, 1)[0].body)
    body["actor"] = "someone.else"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # what someone with the database's owner account could do: the trigger off first
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        conn.execute("UPDATE audit_log SET body = %s WHERE seq = 3", (json.dumps(body),))
    assert main(["audit", "verify"], env) == 1
    out = capsys.readouterr()
    assert "record 3" in out.err and "edited" in out.err
    db.close()
