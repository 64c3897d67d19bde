"""The disk spool: durable FIFO, recovery after restart, bounded with counted drops."""

from __future__ import annotations

from pathlib import Path

from monitor.store.spool import Spool


def test_fifo_peek_and_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, lambda n: None)
    spool.append(["a 1", "a 2"])
    spool.append(["b 1"])
    spool.append(["c 1", "c 2", "c 3"])
    assert spool.points == 6
    first = spool.peek(3)
    assert [s.points for s in first] == [2, 1]
    assert Spool.read(first) == "a 1\na 2\nb 1\n"
    spool.remove(first)
    assert spool.points == 3
    assert [s.points for s in spool.peek(1)] == [3]  # always at least one segment


def test_survives_a_restart_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, lambda n: None)
    for i in range(12):
        spool.append([f"m v={i}"])
    (tmp_path / "000000000099-1.tmp").write_text("half written")
    again = Spool(tmp_path, 1 << 20, lambda n: None)
    assert again.points == 12
    assert Spool.read(again.peek(100)).splitlines() == [f"m v={i}" for i in range(12)]
    assert not list(tmp_path.glob("*.tmp"))
    again.append(["m v=12"])
    assert Spool.read(again.peek(100)).splitlines()[-1] == "m v=12"


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    spool = Spool(tmp_path, 100, dropped.append)
    for i in range(10):
        spool.append([f"measurement value={i:04d}"] * 2)  # ~50 bytes a segment
    assert spool.size <= 100
    assert sum(dropped) + spool.points == 20
    assert sum(dropped) > 0
    assert Spool.read(spool.peek(100)).splitlines()[-1] == "measurement value=0009"
