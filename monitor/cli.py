"""The `monitor` command line (docs/cli.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from monitor.core.yamlfile import ConfigError
from monitor.platform.config import Settings, config_dir_from_env, load_settings

log = logging.getLogger("monitor")


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    return load_settings(config_dir_from_env(env, args.config), env)


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The service: ingest, storage, API (embedded broker and store by default)."""
    from monitor.service import Service

    service = Service(_settings(args, env))
    service.start()
    try:
        service.serve_http()
    finally:
        service.stop()
    return 0


def cmd_demo(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The service plus a simulated fleet publishing to it."""
    from monitor.demo import run_demo

    code: int = run_demo(_settings(args, env), args)
    return code


def cmd_simulate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Publish a simulated fleet's telemetry to a broker."""
    from monitor.demo import run_simulator

    code: int = run_simulator(args)
    return code


def cmd_registry_import(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Load registry rows from CSV into the state store (all or nothing)."""
    from monitor.core.registry import parse_csv
    from monitor.store.state import SqliteState

    settings = _settings(args, env)
    parsed = parse_csv(Path(args.file).read_text(encoding="utf-8"))
    if parsed.errors:
        for error in parsed.errors:
            print(f"{args.file}: {error}", file=sys.stderr)
        print(f"{len(parsed.errors)} row(s) refused; nothing imported", file=sys.stderr)
        return 1
    state = SqliteState(settings.storage.data_dir / "state.sqlite")
    try:
        added, updated = state.upsert_meters(parsed.rows)
    finally:
        state.close()
    print(f"imported {len(parsed.rows)} meter(s): {added} added, {updated} updated")
    return 0


def cmd_evaluate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """One evaluation pass (the running service's, else all of it here), as a table."""
    # Asks the running service (POST /api/evaluate on the configured API) when one
    # answers; otherwise runs the whole pass here: store, publish, alert, notify.
    from monitor.evaluate_command import Request, api_url, ask_service, run_here

    settings = _settings(args, env)
    req = Request(args.as_of, args.force, args.all)
    url = args.api or api_url(settings)
    code = ask_service(url.rstrip("/"), req, sys.stdout, sys.stderr)
    if code is not None:
        return code
    if args.api:
        print(f"no monitor API answers at {args.api}", file=sys.stderr)
        return 1
    return run_here(settings, req, sys.stdout, sys.stderr)


def cmd_rules_backtest(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Re-run stored history under a rules file; list decisions that would differ."""
    from monitor.core.rulebook import load_rules
    from monitor.evaluation.backtest import backtest
    from monitor.evaluation.report import table
    from monitor.evaluation.runner import Evaluator
    from monitor.platform.metrics import Metrics
    from monitor.store import open_store
    from monitor.store.state import SqliteState
    from monitor.taxi.tariff import load_tariffs

    settings = _settings(args, env)
    current = load_rules(settings.rules_file)
    candidate = load_rules(Path(args.file)) if args.file else current
    store = open_store(settings.storage, Metrics())
    state = SqliteState(settings.storage.data_dir / "state.sqlite")
    try:
        book_of_tariffs = load_tariffs(settings.tariffs_file, settings.scheduling.timezone)
        evaluator = Evaluator(
            store, state, tariffs=lambda: book_of_tariffs, zone=settings.scheduling.zone
        )
        latest = evaluator.default_as_of()
        if latest is None:
            print("no telemetry stored: nothing to backtest", file=sys.stderr)
            return 1
        diffs = backtest(evaluator, current, candidate, latest, args.since)
    finally:
        store.close()
        state.close()
    print(
        f"{current.version} → {candidate.version}, {args.since + 1} daily passes: "
        f"{len(diffs)} decision(s) differ"
    )
    rows = [
        (d.as_of[:10], d.subject, d.kind, "/".join(d.before), "/".join(d.after), d.reason)
        for d in diffs
    ]
    if rows:
        print(
            table(["as_of", "subject", "kind", "in force", "candidate", "candidate's reason"], rows)
        )
    return 0


def cmd_rules_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Validate a rules file and say what it would change against the one in force."""
    from monitor.core.rulebook import diff, load_rules

    settings = _settings(args, env)
    target = Path(args.file) if args.file else settings.rules_file
    new = load_rules(target)
    print(f"{target}: valid, version {new.version}")
    if target.resolve() != settings.rules_file.resolve() and settings.rules_file.exists():
        changes = diff(load_rules(settings.rules_file), new)
        print(
            f"against {settings.rules_file}: "
            + (f"{len(changes)} change(s)" if changes else "no change")
        )
        for line in changes:
            print(f"  {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="monitor", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None, help="config folder (MONITOR_CONFIG)")
        return p

    with_config(sub.add_parser("run", help=cmd_run.__doc__)).set_defaults(func=cmd_run)
    demo = with_config(sub.add_parser("demo", help=cmd_demo.__doc__))
    demo.set_defaults(func=cmd_demo)
    sim = sub.add_parser("simulate", help=cmd_simulate.__doc__)
    sim.add_argument("--broker", required=True, help="mqtt://host:port")
    sim.set_defaults(func=cmd_simulate)
    for p in (demo, sim):
        _fleet_arguments(p)

    registry = sub.add_parser("registry", help="the meter registry").add_subparsers(
        dest="action", required=True
    )
    imp = with_config(registry.add_parser("import", help=cmd_registry_import.__doc__))
    imp.add_argument("file")
    imp.set_defaults(func=cmd_registry_import)

    ev = with_config(sub.add_parser("evaluate", help=cmd_evaluate.__doc__))
    ev.add_argument("--as-of", default=None, help="RFC 3339 or epoch ms; default: latest telemetry")
    ev.add_argument("--all", action="store_true", help="list every meter, not only findings")
    ev.add_argument(
        "--force", action="store_true", help="evaluate an --as-of after the present anyway"
    )
    ev.add_argument(
        "--api",
        default=None,
        metavar="URL",
        help="the running service to ask (default: http:// + api.http of the config); "
        "when none answers at the default, the pass runs in this process",
    )
    ev.set_defaults(func=cmd_evaluate)

    rules = sub.add_parser("rules", help="the rules file").add_subparsers(
        dest="action", required=True
    )
    check = with_config(rules.add_parser("check", help=cmd_rules_check.__doc__))
    check.add_argument("file", nargs="?")
    check.set_defaults(func=cmd_rules_check)
    back = with_config(rules.add_parser("backtest", help=cmd_rules_backtest.__doc__))
    back.add_argument("file", nargs="?", help="candidate rules file (default: the one in force)")
    back.add_argument("--since", type=int, default=7, help="days of history to replay")
    back.set_defaults(func=cmd_rules_backtest)
    return parser


def _fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--districts", type=int, default=3)
    p.add_argument("--meters-per-district", type=int, default=50)
    p.add_argument("--taxis", type=int, default=20)
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second")
    p.add_argument(
        "--start", default=None, help="simulated start (RFC 3339); default: now - backfill"
    )
    p.add_argument("--backfill-days", type=float, default=1.0, help="history published at once")
    p.add_argument("--duration-days", type=float, default=None, help="stop after this much")
    p.add_argument("--resolution-kwh", type=float, default=0.001, help="register resolution")
    p.add_argument("--missing", type=float, default=0.01, help="share of readings never sent")
    p.add_argument("--duplicates", type=float, default=0.005, help="share sent twice")
    p.add_argument("--disorder", type=float, default=0.01, help="share sent late")
    p.add_argument("--registry-out", type=Path, default=None, help="write the fleet's registry CSV")
    p.add_argument("--topic-root", default="meters")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of the `monitor` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        func = args.func
        return int(func(args, os.environ if env is None else env))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
