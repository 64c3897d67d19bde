"""Alert noise: how many alerts a demo-like fleet opens, by kind, rule and severity.

    .venv/bin/python -m bench.noise                      # the demo's fleet, 1 and 35 days
    .venv/bin/python -m bench.noise --days 35 --passes 3 # three daily passes after 35 days

The fleet is the demo's (`monitor demo` defaults: seed 1, 3 districts of 50 meters,
20 taxis, its planted faults), written straight to an embedded store; each pass is the
service's (`Evaluator.run` with an `AlertBook`), as of the end of the history and then
once a day. Printed: every alert open after the passes, then counts by kind, rule and
severity, and, beside them, what the fleet's ground truth says deserves one (a planted
fault). Nothing is timed; the figures are counts, the same on every machine.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from monitor.alerts.book import AlertBook
from monitor.core.registry import parse_rows
from monitor.core.rulebook import load_rules
from monitor.core.schema import Record
from monitor.evaluation.runner import Evaluator
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from monitor.taxi.tariff import load_tariffs

REPO = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000
START_MS = 1772294400000  # 2026-03-01T00:00:00+08:00


def _fleet(seed: int) -> Fleet:
    """The demo's fleet (`monitor demo` defaults)."""
    spec = FleetSpec(
        start_ms=START_MS, seed=seed, districts=3, meters_per_district=(50, 50), taxis=20
    )
    return Fleet(spec)


def run(days: float, passes: int, seed: int) -> list[dict[str, Any]]:
    """The alerts open after `passes` daily passes over `days` of the demo's fleet."""
    fleet = _fleet(seed)
    end = START_MS + int(days * DAY_MS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        state = SqliteState(folder / "state.sqlite")
        store = EmbeddedStore(folder / "telemetry.sqlite", Metrics())
        alerts = AlertBook(folder / "state.sqlite", 2 * DAY_MS)
        state.upsert_meters(parse_rows(fleet.registry_rows()).rows)
        records = [
            r
            for m in fleet.messages(START_MS, end + max(0, passes - 1) * DAY_MS)
            if isinstance(r := parse_message(m.topic, m.payload), Record)
        ]
        store.write(records)
        state.note_seen(summarise_seen(records, max(r.ts_ms for r in records) / 1000))
        tariffs = load_tariffs(REPO / "config" / "tariffs.yaml")
        book = load_rules(REPO / "config" / "rules.yaml")
        evaluator = Evaluator(store, state, tariffs=lambda: tariffs, alerts=alerts)
        for i in range(passes):
            evaluator.run(end + i * DAY_MS, book)
        found = alerts.list("open", None, None, 0, 100_000)
        alerts.close()
        state.close()
        store.close()
    return found


def planted(days: float, seed: int) -> Counter[str]:
    """The faults the fleet's ground truth plants (what deserves an alert), by kind."""
    out: Counter[str] = Counter()
    for truth in _fleet(seed).truth().values():
        for fault in truth["faults"]:
            out[f"{truth['kind']} {fault}"] += 1
    return out


def report(days: float, passes: int, seed: int) -> None:
    found = run(days, passes, seed)
    print(f"\n## {days:g} days of history, {passes} pass(es): {len(found)} open alerts")
    for a in found:
        subject = a["meter"] or a["lot"] or a["district"]
        print(f"  {a['severity']:<8} {a['kind']:<8} {subject:<22} {a['rule']}")
        print(f"           {a['message'][:150]}")
    for title, key in (("kind", "kind"), ("rule", "rule"), ("severity", "severity")):
        counts = Counter(str(a[key]) for a in found)
        print(f"  by {title}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    subjects = {(a["kind"], a["meter"] or a["lot"] or a["district"]) for a in found}
    per_kind = Counter(kind for kind, _ in subjects)
    print("  subjects with an alert: " + ", ".join(f"{k} {n}" for k, n in sorted(per_kind.items())))
    faults = planted(days, seed)
    print("  planted faults: " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, action="append", help="history (default 1 and 35)")
    parser.add_argument("--passes", type=int, default=1, help="daily passes at the end")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for days in args.days or [1.0, 35.0]:
        report(days, args.passes, args.seed)


if __name__ == "__main__":
    main()
