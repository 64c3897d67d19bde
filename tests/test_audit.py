"""The audit log: the hash chain shows an edited, removed or inserted record at its first
broken link (`monitor audit verify`), purging old records keeps it whole, and the SQLite
store refuses changes by trigger."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.core.audit import GENESIS, ChainCheck
from monitor.core.ports import AuditEntry
from monitor.store.audit import SqliteAudit

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
