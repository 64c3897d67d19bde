"""A durable, bounded FIFO of line-protocol segments on disk.

Every batch the worker hands the InfluxDB backend is first written here and
fsync'd; only then is the MQTT message acknowledged. A flusher drains the
oldest segments to InfluxDB and deletes them once InfluxDB has accepted them,
so neither a dead InfluxDB nor a killed worker loses a point. When the bound is
reached the *oldest* segments go first (recent data drives current decisions)
and every dropped point is counted.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Segment:
    """One spooled batch."""

    path: Path
    points: int
    size: int


def _parse_name(path: Path) -> tuple[int, int] | None:
    stem = path.name.removesuffix(".lp")
    seq, _, points = stem.partition("-")
    if not (seq.isdigit() and points.isdigit()):
        return None
    return int(seq), int(points)


class Spool:
    """Segments `NNNNNNNNNNNN-POINTS.lp` in one folder, oldest first.

    spool = Spool(Path("data/spool"), max_bytes=1 << 30, on_drop=print)
    spool.append(["m,meter=a v=1 1"]); segs = spool.peek(5000); spool.remove(segs)
    """

    def __init__(self, directory: Path, max_bytes: int, on_drop: Callable[[int], None]) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._segments: deque[Segment] = deque()
        self._next = 0
        self._recover()

    def _recover(self) -> None:
        for tmp in self._dir.glob("*.tmp"):
            tmp.unlink()  # a batch interrupted before its rename was never acknowledged
        found = []
        for path in self._dir.glob("*.lp"):
            parsed = _parse_name(path)
            if parsed is not None:
                found.append((parsed[0], Segment(path, parsed[1], path.stat().st_size)))
        for seq, seg in sorted(found, key=lambda item: item[0]):
            self._segments.append(seg)
            self._next = seq + 1

    @property
    def points(self) -> int:
        with self._lock:
            return sum(s.points for s in self._segments)

    @property
    def size(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    def append(self, lines: list[str], note: str = "") -> None:
        """Write a batch durably (fsync'd file and folder) before returning.

        A `note` (one line of text: what the batch wrote, for whoever must hear of it once
        it is flushed) is kept in the same file, as a first line starting with `#`.
        """
        if "\n" in note:
            raise ValueError("a segment's note is one line")
        head = f"#{note}\n" if note else ""
        data = (head + "\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            seq = self._next
            self._next += 1
            self._make_room(len(data))
        path = self._dir / f"{seq:012d}-{len(lines)}.lp"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._fsync_dir()
        with self._lock:
            self._segments.append(Segment(path, len(lines), len(data)))

    def _make_room(self, incoming: int) -> None:
        used = sum(s.size for s in self._segments)
        dropped = 0
        while self._segments and used + incoming > self._max_bytes:
            seg = self._segments.popleft()
            seg.path.unlink(missing_ok=True)
            used -= seg.size
            dropped += seg.points
        if dropped:
            self._on_drop(dropped)

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def peek(self, max_points: int) -> list[Segment]:
        """Oldest segments adding up to at most `max_points` (always at least one)."""
        out: list[Segment] = []
        total = 0
        with self._lock:
            for seg in self._segments:
                if out and total + seg.points > max_points:
                    break
                out.append(seg)
                total += seg.points
        return out

    @staticmethod
    def read(segments: list[Segment]) -> str:
        """The segments' lines as one body."""
        return Spool.load(segments)[0]

    @staticmethod
    def load(segments: list[Segment]) -> tuple[str, list[str]]:
        """The segments' lines as one body, and the notes of those that have one."""
        body, notes = [], []
        for seg in segments:
            text = seg.path.read_text(encoding="utf-8")
            if text.startswith("#"):
                note, _, text = text.partition("\n")
                notes.append(note[1:])
            body.append(text)
        return "".join(body), notes

    def remove(self, segments: list[Segment]) -> None:
        """Forget segments that InfluxDB has accepted (or that were refused for good)."""
        gone = {s.path for s in segments}
        with self._lock:
            self._segments = deque(s for s in self._segments if s.path not in gone)
        for seg in segments:
            seg.path.unlink(missing_ok=True)
