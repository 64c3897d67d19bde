"""Pieces every benchmark script uses: the broker's version line, a spawned process pool."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
from collections.abc import Callable, Sequence
from typing import TypeVar

from tests.services import find_mosquitto

T = TypeVar("T")
R = TypeVar("R")


def mosquitto_version() -> str:
    """The first line `mosquitto -h` prints (its version), for the figures' header."""
    mosquitto = find_mosquitto() or "mosquitto"
    out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).splitlines()
    return text[0] if text else "mosquitto ?"


def map_spawned(fn: Callable[[T], R], tasks: Sequence[T], workers: int) -> list[R]:
    """`fn` over `tasks`, in this process for one worker, else in freshly spawned ones."""
    if workers <= 1:
        return [fn(t) for t in tasks]
    pool = mp.get_context("spawn").Pool(workers)
    try:
        runs = pool.map(fn, tasks, chunksize=1)
        pool.close()
    finally:
        pool.join()
    return runs
