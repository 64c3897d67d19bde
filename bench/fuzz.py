"""The API fuzzer at length: schemathesis against the OpenAPI schema, every operation,
valid and invalid input, random seeds, with a token whose role may call each route.

    .venv/bin/python -m bench.fuzz                   # 200 examples per operation and mode
    .venv/bin/python -m bench.fuzz --examples 1000 --seed 7

Builds the same service state as tests/test_access.py (a simulated fleet, an access file,
an evaluation) in a temp folder and prints, per operation, how many calls answered with
each status; any 5xx (503 aside) or exception is listed with a call to reproduce it and
makes the exit code 1. tests/test_fuzz.py runs a short, derandomised version in the suite.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode

from tests.test_access import Site
from tests.test_fuzz import operations, token_for


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=200, help="per operation and mode")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args()
    site = Site(Path(tempfile.mkdtemp(prefix="monitor-fuzz-")))
    counts: collections.Counter[tuple[str, str, int]] = collections.Counter()
    failures: dict[tuple[str, str], str] = {}
    started = time.monotonic()
    for op in operations(site):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=args.examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                key = (case.method.upper(), case.path)
                case.headers = {**(case.headers or {}), **token_for(*key)}
                try:
                    r = case.call()
                except Exception as exc:  # a server error raised through the test client
                    failures.setdefault(key, f"{exc!r:.300} ← {case.as_curl_command()}")
                    return
                counts[(*key, r.status_code)] += 1
                if r.status_code >= 500 and r.status_code != 503:
                    failures.setdefault(key, f"{r.status_code} ← {case.as_curl_command()}")

            if args.seed is not None:
                run = seed(args.seed)(run)
            run()
    elapsed = time.monotonic() - started
    site.close()
    calls = sum(counts.values())
    print(f"{calls} calls over {len(operations(site))} operations in {elapsed:.0f} s")
    print(f"{'operation':<48} statuses")
    by_op: dict[tuple[str, str], dict[int, int]] = collections.defaultdict(dict)
    for (method, path, status), n in sorted(counts.items()):
        by_op[(method, path)][status] = n
    for (method, path), statuses in by_op.items():
        text = " ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))
        print(f"{method + ' ' + path:<48} {text}")
    for (method, path), what in failures.items():
        print(f"FAILURE {method} {path}: {what}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
