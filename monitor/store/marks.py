"""Day marks for a shared state, kept on local disk while the state cannot take them.

A store marks the (district, day)s a batch wrote once the batch is readable
(`core.ports.DayMarks`); on a cluster the marks go to the shared PostgreSQL state. Were
a mark to fail the write (as it does on the embedded state), a database outage would
hold telemetry back: the InfluxDB store would keep every flushed segment in its spool
until the marks went through, and a long outage would fill the spool and drop
readings. So here a mark the state refuses is written to a small local file instead
(atomically, before `mark_days` returns) and sent with the next batch's marks, or by
`retry`, once the state is back; after a restart the file is read again.

A mark that arrives late is still a mark: it gets a newer sequence number than any
summary made before it, so the next pass reads its day again (a pass in between reads
that day as it was summarised, as if its late readings had come in after the pass).
Pending marks are (district, day) pairs, at most one per district per day touched
during the outage: small, so the file needs no bound of its own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Collection
from pathlib import Path

from monitor.core.ports import DayMarks, StateUnavailable
from monitor.platform.metrics import Metrics

log = logging.getLogger(__name__)


class PendingMarks:
    """`DayMarks` in front of a shared state: what it refuses waits in `path`."""

    def __init__(self, target: DayMarks, path: Path, metrics: Metrics) -> None:
        self._target = target
        self._path = path
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pending: set[tuple[str, int]] = _read(path)
        self._metrics.marks_pending.set(len(self._pending))
        if self._pending:
            log.warning(
                "%d day mark(s) from before a restart wait for the state", len(self._pending)
            )

    @property
    def pending(self) -> int:
        """How many (district, day) marks wait for the state."""
        return len(self._pending)

    def mark_days(self, days: Collection[tuple[str, int]]) -> None:
        """Mark `days` (with any waiting) in the state, or keep them all on disk; raises
        only when neither can be done (the caller then keeps the batch, as before)."""
        with self._lock:
            wanted = self._pending | set(days)
            if not wanted:
                return
            try:
                self._target.mark_days(wanted)
            except StateUnavailable as exc:
                if not wanted <= self._pending:
                    _write(self._path, wanted)  # before returning: the batch is acknowledged
                    if not self._pending:
                        log.warning("day marks wait on disk while the state is away: %s", exc)
                self._set(wanted)
                return
            if self._pending:
                log.info("%d waiting day mark(s) delivered", len(self._pending))
                self._path.unlink(missing_ok=True)
            self._set(set())

    def retry(self) -> None:
        """Send the waiting marks, if any (periodically, when no batch comes to carry them)."""
        if self._pending:
            self.mark_days(())

    def _set(self, pending: set[tuple[str, int]]) -> None:
        self._pending = pending
        self._metrics.marks_pending.set(len(pending))


def _read(path: Path) -> set[tuple[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    try:
        return {(str(d), int(day)) for d, day in json.loads(text)}
    except (ValueError, TypeError) as exc:
        # Unreadable (cut short on a full disk): its days cannot be known, and summaries
        # taken as current could be stale. Refuse to start rather than guess.
        raise RuntimeError(
            f"{path}: pending day marks unreadable ({exc}); delete the file and the state's "
            "day_summaries rows (every summary is then made again) to go on"
        ) from exc


def _write(path: Path, pending: set[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(sorted(pending), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
