"""Hot reload of config files: a valid change is taken, a bad one refused and logged."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class HotFile(Generic[T]):
    """The last valid content of a file, re-read when its bytes change.

    rules = HotFile(Path("config/rules.yaml"), load_rules)   # raises if invalid at start
    rules.check()  # periodically; rules.current is what is in force
    """

    def __init__(self, path: Path, loader: Callable[[Path], T]) -> None:
        self.path = path
        self._loader = loader
        self._lock = threading.Lock()
        self._current = loader(path)
        self._digest = self._read_digest()
        self.last_error: str | None = None
        self.reloads = 0
        self.failures = 0

    @property
    def current(self) -> T:
        with self._lock:
            return self._current

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def check(self) -> bool:
        """Reload if the file changed; True when a new valid version is now in force."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest  # a bad version is reported once, not every check
        try:
            fresh = self._loader(self.path)
        except Exception as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.error("refused new %s; the previous version stays in force:\n%s", self.path, exc)
            return False
        with self._lock:
            self._current = fresh
        self.reloads += 1
        self.last_error = None
        log.info("reloaded %s", self.path)
        return True
