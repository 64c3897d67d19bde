"""The `monitor` command line (docs/cli.md)."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.core.ports import AuditEntry
from monitor.core.yamlfile import ConfigError
from monitor.platform.config import Settings, config_dir_from_env, load_settings
from monitor.platform.listen import StartupError

if TYPE_CHECKING:
    from monitor.store.backends import StateBackend

log = logging.getLogger("monitor")
# An operator's API token for commands that ask the running service (docs/cli.md).
TOKEN_VAR = "MONITOR_API_TOKEN"


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    return load_settings(config_dir_from_env(env, args.config), env)


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The service: ingest, storage, API (embedded broker and store by default)."""
    from monitor.service import Service

    service = Service(_settings(args, env))
    service.bind_http()
    service.start()
    try:
        service.serve_http()
    finally:
        service.stop()
    return 0


def cmd_demo(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The service plus a simulated fleet: weeks of history loaded at once, then live telemetry."""
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
    from monitor.core.registry import parse_csv, region_conflicts
    from monitor.store.backends import open_state

    settings = _settings(args, env)
    parsed = parse_csv(Path(args.file).read_text(encoding="utf-8"))
    if parsed.errors:
        for error in parsed.errors:
            print(f"{args.file}: {error}", file=sys.stderr)
        print(f"{len(parsed.errors)} row(s) refused; nothing imported", file=sys.stderr)
        return 1
    backend = open_state(settings.state, settings.storage.data_dir, "monitor-registry-import")
    try:
        conflicts = region_conflicts(backend.state.registry_rows(), parsed.rows)
        if conflicts:
            for conflict in conflicts:
                print(f"{args.file}: {conflict}", file=sys.stderr)
            print("nothing imported", file=sys.stderr)
            return 1
        added, updated = backend.state.upsert_meters(parsed.rows)
        detail = {"file": str(args.file), "added": added, "updated": updated}
        backend.audit.append(AuditEntry(_cli_actor(), "cli", "registry.import", "registry", detail))
    finally:
        backend.close()
    print(f"imported {len(parsed.rows)} meter(s): {added} added, {updated} updated")
    return 0


def cmd_telemetry_import(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Load telemetry history from JSON Lines files (a backfill), validated as ingest
    validates each message, stored through the telemetry store, then kept as day
    summaries."""
    from monitor.core.rulebook import load_rules
    from monitor.evaluation.backfill import summarise
    from monitor.ingest.importer import ImportRules, ImportStalled, import_lines
    from monitor.ingest.limits import Limits
    from monitor.platform.metrics import Metrics
    from monitor.service import day_summaries
    from monitor.store import open_store

    settings = _settings(args, env)
    missing = [f for f in args.files if f != "-" and not Path(f).is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    backend = _backend(settings, "monitor-telemetry-import")
    state = backend.state
    marked = day_summaries(settings)  # passes read summaries: the import's days are marked
    window = (
        load_rules(settings.rules_file).rules.elec.estimation.window_days
        if marked and not args.no_summaries
        else None
    )
    # Its own spool beside a running service's: it is flushed before the command ends.
    store = open_store(
        settings.storage, Metrics(), marks=state if marked else None, spool="spool-import"
    )
    rules = ImportRules(
        settings.mqtt.topic_root,
        settings.mqtt.max_payload_bytes,
        Limits.of(settings.ingest),
        int(time.time() * 1000),
        state.registry_districts(),
    )
    rejects = open(args.rejects, "w", encoding="utf-8") if args.rejects else None  # noqa: SIM115
    totals: dict[str, Any] = {}
    try:
        for name in args.files:
            handle = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
            try:
                report = import_lines(handle, store, state, rules, rejects)
            except ImportStalled as exc:
                print(f"{name}: {exc}; what was read is stored or spooled", file=sys.stderr)
                return 1
            finally:
                if handle is not sys.stdin:
                    handle.close()
            if not store.flush(600):
                print(f"{name}: the telemetry store did not take everything", file=sys.stderr)
                return 1
            state.flush_seen()
            if window is not None:
                report.summarised = summarise(store, state, report.days, window)
            totals[name] = report.as_dict()
            print(json.dumps({"file": name, **report.as_dict()}, ensure_ascii=False))
        detail = {"files": totals, "rejects": str(args.rejects) if args.rejects else None}
        backend.audit.append(
            AuditEntry(_cli_actor(), "cli", "telemetry.import", "telemetry", detail)
        )
    finally:
        if rejects is not None:
            rejects.close()
        store.close()
        backend.close()
    refused = sum(sum(r["rejected"].values()) for r in totals.values())
    return 1 if refused and args.strict else 0


def _backend(settings: Settings, owner: str) -> StateBackend:
    """The state the settings name (embedded files, or the cluster's PostgreSQL)."""
    from monitor.store.backends import open_state

    return open_state(settings.state, settings.storage.data_dir, owner)


def _cli_actor() -> str:
    """Who ran a command, for the audit log: the operating-system account."""
    return f"{getpass.getuser()} (command line)"


def cmd_audit_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Walk the audit log's hash chain; name the first broken link (exit 1) or say it holds."""
    from monitor.core.audit import ChainCheck

    settings = _settings(args, env)
    backend = _backend(settings, "monitor-audit-verify")
    audit = backend.audit
    try:
        anchor = audit.anchor()
        check = ChainCheck(anchor)
        after = anchor.seq if anchor else 0
        broken = None
        while broken is None:
            rows = audit.rows(after, 10_000)
            for row in rows:
                broken = check.feed(row)
                if broken is not None:
                    break
            if not rows:
                break
            after = rows[-1].seq
        broken = broken or check.finish(audit.head())
    finally:
        backend.close()
    if broken is not None:
        print(f"audit chain broken at {broken}", file=sys.stderr)
        return 1
    print(f"audit chain intact: {check.checked} record(s) checked")
    return 0


def cmd_access_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Make a new random API token: print it once, with the sha256 the access file keeps."""
    import secrets

    from monitor.platform.access import token_hash

    token = secrets.token_urlsafe(32)
    print(f"token:  {token}\nsha256: {token_hash(token)}")
    return 0


def cmd_access_hash(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the sha256 of a token read from standard input (for the access file)."""
    from monitor.platform.access import token_hash

    token = sys.stdin.readline().strip()
    if not token:
        print("no token on standard input", file=sys.stderr)
        return 1
    print(token_hash(token))
    return 0


def cmd_mqtt_acl(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Write a Mosquitto acl_file from the registry: each meter publishes only under its own
    topics and reads only its own commands; the worker reads telemetry and publishes results."""
    from monitor.platform.mqtt_acl import acl_text

    settings = _settings(args, env)
    backend = _backend(settings, "monitor-mqtt-acl")
    try:
        rows = backend.state.registry_rows()
    finally:
        backend.close()
    text = acl_text(rows, args.worker, settings.mqtt.topic_root, args.mode)
    _write_or_print(args.out, text, 0o644)
    if args.out:
        print(f"{args.out}: {len(rows)} meter(s) and the worker {args.worker!r}", file=sys.stderr)
    return 0


def cmd_mqtt_passwords(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Make a password for every registered meter and the worker: a Mosquitto password_file
    (hashed) and a CSV of user,password to provision the meters with (keep it secret)."""
    from monitor.platform.mqtt_acl import new_passwords, password_file

    settings = _settings(args, env)
    backend = _backend(settings, "monitor-mqtt-passwords")
    try:
        users = [args.worker, *(r.meter_id for r in backend.state.registry_rows())]
    finally:
        backend.close()
    secrets_ = new_passwords(users)
    _write_or_print(Path(args.out), password_file(secrets_), 0o600)
    lines = "user,password\n" + "".join(f"{u},{p}\n" for u, p in secrets_.items())
    _write_or_print(Path(args.credentials), lines, 0o600)
    print(f"{args.out}: {len(users)} account(s); passwords in {args.credentials}", file=sys.stderr)
    return 0


def _write_or_print(path: Path | None, text: str, mode: int) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _mqtt_commands(sub: Any, command: Any, with_config: Any) -> None:
    mqtt = command(sub, "mqtt", "broker accounts and topic rights").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    acl = with_config(command(mqtt, "acl", cmd_mqtt_acl.__doc__))
    acl.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    acl.add_argument("--worker", default="monitor", help="the worker's broker user name")
    acl.add_argument(
        "--mode",
        choices=["registry", "pattern"],
        default="registry",
        help="registry: one block per registered meter, its district pinned (regenerate after "
        "registry changes); pattern: %%u patterns, any meter with an account, own topics only",
    )
    acl.set_defaults(func=cmd_mqtt_acl)
    pw = with_config(command(mqtt, "passwords", cmd_mqtt_passwords.__doc__))
    pw.add_argument("--out", required=True, help="the Mosquitto password_file to write")
    pw.add_argument("--credentials", required=True, help="CSV of user,password to write")
    pw.add_argument("--worker", default="monitor", help="the worker's broker user name")
    pw.set_defaults(func=cmd_mqtt_passwords)


def cmd_evaluate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """One evaluation pass (the running service's, else all of it here), as a table."""
    # Asks the running service (POST /api/evaluate on the configured API) when one
    # answers; otherwise runs the whole pass here: store, publish, alert, notify.
    from monitor.evaluate_command import Request, api_url, ask_service, run_here

    settings = _settings(args, env)
    req = Request(args.as_of, args.force, args.all)
    url = args.api or api_url(settings)
    token = env.get(TOKEN_VAR) or None
    code = ask_service(url.rstrip("/"), req, sys.stdout, sys.stderr, token)
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
    from monitor.service import day_summaries
    from monitor.store import open_store
    from monitor.store.backends import open_state
    from monitor.taxi.tariff import load_tariffs

    settings = _settings(args, env)
    current = load_rules(settings.rules_file)
    candidate = load_rules(Path(args.file)) if args.file else current
    backend = open_state(settings.state, settings.storage.data_dir, "monitor-backtest")
    state = backend.state
    summaries = state if day_summaries(settings) else None
    store = open_store(settings.storage, Metrics(), marks=summaries)
    try:
        book_of_tariffs = load_tariffs(settings.tariffs_file, settings.scheduling.timezone)
        # Both rule books replay the same days: from the day summaries (which hold each
        # day's readings, not anything a rule derived from them, so any rules change may
        # use them), read from the store only where a day changed or has none yet.
        evaluator = Evaluator(
            store,
            state,
            tariffs=lambda: book_of_tariffs,
            zone=settings.scheduling.zone,
            summaries=summaries,
        )
        latest = evaluator.default_as_of()
        if latest is None:
            print("no telemetry stored: nothing to backtest", file=sys.stderr)
            return 1
        diffs = backtest(evaluator, current, candidate, latest, args.since)
    finally:
        store.close()
        backend.close()
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


def cmd_rules_promote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Make the candidate rules (uploaded, else config/rules.candidate.yaml) the rules in force.

    Writes the rules file (a running service takes it at its next reload check) and
    records the promotion: who, when, from and to which version, what changed. On a
    cluster's state (MONITOR_STATE_URL) the promoted rules go to the state instead, and
    every worker takes them at its next reload check.
    """
    from monitor.core.rulebook import load_rules
    from monitor.evaluation.shadow import CandidateError, PromotedRules, RulesDesk
    from monitor.service import rules_shelf

    settings = _settings(args, env)
    backend = _backend(settings, "monitor-rules-promote")
    try:
        shelf = rules_shelf(backend, settings.storage.data_dir)
        # On the cluster's state the rules in force may be a promotion's, not the file's.
        rules = PromotedRules(settings.rules_file, load_rules, shelf) if shelf.shared else None
        desk = RulesDesk(
            settings.rules_file,
            settings.storage.data_dir,
            in_force=(lambda: rules.current) if rules is not None else None,
            shelf=shelf,
        )
        done = desk.promote(args.actor, args.comment or "")
    except CandidateError as exc:
        print(f"not promoted: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    print(f"promoted {done.source}: {done.from_version} → {done.to_version}")
    for line in done.changes:
        print(f"  {line}")
    return 0


EXIT_CODES = """\
exit codes:
  0    done
  1    the command did not do what was asked (registry rows refused, nothing to
       evaluate, simulated messages the broker did not acknowledge)
  2    bad arguments or a configuration file refused (file, line, key, reason)
  3    the service could not start: a port it needs is in use, or the embedded
       broker did not come up (one line on stderr says which and what to set)
  130  interrupted (Ctrl-C)
"""

IMPORT_FORMAT = """\
One message per line, as sent over MQTT:
  {"topic": "meters/elec/TA1/M1/reading", "payload": {"ts": "...", "energy_kwh": 1.2}}
(the payload an object, or its text). Each is checked as ingest checks a message
(topic, schema, bounds, not ahead of now, the registry's district) and stored;
refused lines are counted by reason (and written to --rejects). The meters are
recorded as heard from at their own event times. With day summaries on
(scheduling.day_summaries), each district's recent imported days (the
estimation window and 7 days more) are then read back once and kept, so
passes and default backtests over them do not read them again.
One JSON line per file on stdout: lines, stored, ignored, rejected by reason,
districts, days summarised.
"""

REGISTRY_COLUMNS = """\
CSV columns (header row required; meter_id and kind required, the rest may be empty):
  meter_id        the meter's id as in its MQTT topics (letters, digits, - _ .)
  kind            elec or taxi
  role            elec only: customer or master (the district's master meter)
  district        elec only: the transformer area (district) id
  lot             delivery lot (same manufacturer, model, class, delivery batch)
  manufacturer    free text
  model           free text
  accuracy_class  elec: 0.2S 0.5S 0.5 1 2 3 or A B C D
  installed_on    YYYY-MM-DD
  verified_on     YYYY-MM-DD, the last (initial or periodic) verification
  period_years    verification period in years (1..30): the due date is
                  verified_on (else installed_on) + period_years
  plate           taxi only: the vehicle's plate
  region          the region the meter belongs to (empty: the default region); a district
                  and a lot belong to one region
  feeder_branch   elec only, optional: the low-voltage cable the household hangs on
  feeder_distance_m  elec only, with feeder_branch: cable metres from the transformer
Rows are upserted by meter_id; a file with any bad row, or one that would split a
district or lot across regions, imports nothing.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The default after each option's help (unless the help says it), epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "(default" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="meter-state monitor: decides from their own telemetry which electricity "
        "and taxi fare meters stay in service (extend), get sample-checked (resample) or "
        "replaced (replace).",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="log level: DEBUG, INFO, WARNING or ERROR",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        doc: str | None,
        epilog: str | None = None,
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name, help=doc, description=doc, epilog=epilog, formatter_class=_Formatter
        )

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="config folder with monitor.yaml, rules.yaml, tariffs.yaml "
            "(default: $MONITOR_CONFIG, else ./config)",
        )
        return p

    with_config(command(sub, "run", cmd_run.__doc__, EXIT_CODES)).set_defaults(func=cmd_run)
    demo = with_config(command(sub, "demo", cmd_demo.__doc__, EXIT_CODES))
    demo.set_defaults(func=cmd_demo)
    _fleet_arguments(demo)
    _demo_arguments(demo)
    sim = command(sub, "simulate", cmd_simulate.__doc__, EXIT_CODES)
    sim.add_argument("--broker", required=True, help="the broker to publish to: mqtt://host:port")
    sim.set_defaults(func=cmd_simulate)
    _fleet_arguments(sim)
    _simulate_arguments(sim)

    registry = command(sub, "registry", "the meter registry").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    imp = with_config(command(registry, "import", cmd_registry_import.__doc__, REGISTRY_COLUMNS))
    imp.add_argument("file", help="registry CSV (UTF-8), columns below")
    imp.set_defaults(func=cmd_registry_import)

    telemetry = command(sub, "telemetry", "telemetry history").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    load = with_config(command(telemetry, "import", cmd_telemetry_import.__doc__, IMPORT_FORMAT))
    load.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines files ('-': stdin)")
    load.add_argument(
        "--rejects",
        type=Path,
        default=None,
        help="write each refused line here (JSON Lines: line, reason, detail, text)",
    )
    load.add_argument(
        "--no-summaries", action="store_true", help="do not keep the imported days as summaries"
    )
    load.add_argument("--strict", action="store_true", help="exit 1 when any line was refused")
    load.set_defaults(func=cmd_telemetry_import)

    ev = with_config(command(sub, "evaluate", cmd_evaluate.__doc__))
    ev.add_argument(
        "--as-of",
        default=None,
        help="evaluate as of this time, RFC 3339 or epoch ms (default: the latest telemetry time)",
    )
    ev.add_argument("--all", action="store_true", help="list every meter, not only findings")
    ev.add_argument(
        "--force", action="store_true", help="evaluate an --as-of after the present anyway"
    )
    ev.add_argument(
        "--api",
        default=None,
        metavar="URL",
        help="the running service to ask (default: http:// + api.http of the config; with an "
        "access file in force, an operator token in $MONITOR_API_TOKEN); when none answers "
        "at the default, the pass runs in this process",
    )
    ev.set_defaults(func=cmd_evaluate)

    rules = command(sub, "rules", "the rules file").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    check = with_config(command(rules, "check", cmd_rules_check.__doc__))
    check.add_argument(
        "file", nargs="?", help="rules file to check (default: the one in force, config/rules.yaml)"
    )
    check.set_defaults(func=cmd_rules_check)
    back = with_config(command(rules, "backtest", cmd_rules_backtest.__doc__))
    back.add_argument("file", nargs="?", help="candidate rules file (default: the one in force)")
    back.add_argument(
        "--since", type=int, default=7, help="days of history to replay, one pass a day"
    )
    back.set_defaults(func=cmd_rules_backtest)
    promote = with_config(command(rules, "promote", cmd_rules_promote.__doc__))
    promote.add_argument("--actor", required=True, help="who promotes (recorded)")
    promote.add_argument("--comment", default=None, help="why (recorded)")
    promote.set_defaults(func=cmd_rules_promote)

    audit = command(sub, "audit", "the hash-chained audit log").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    verify = with_config(command(audit, "verify", cmd_audit_verify.__doc__))
    verify.set_defaults(func=cmd_audit_verify)

    access = command(sub, "access", "API tokens for the access file").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    command(access, "token", cmd_access_token.__doc__).set_defaults(func=cmd_access_token)
    command(access, "hash", cmd_access_hash.__doc__).set_defaults(func=cmd_access_hash)
    _mqtt_commands(sub, command, with_config)
    return parser


def _fleet_arguments(p: argparse.ArgumentParser) -> None:
    """The simulated fleet: its size, randomness and delivery defects."""
    p.add_argument(
        "--seed", type=int, default=1, help="random seed: same seed, same fleet and faults"
    )
    p.add_argument(
        "--districts", type=int, default=3, help="electricity districts (transformer areas)"
    )
    p.add_argument(
        "--meters-per-district",
        type=int,
        default=50,
        help="customer meters per district (plus one master meter each)",
    )
    p.add_argument("--taxis", type=int, default=20, help="taxi fare meters")
    p.add_argument(
        "--start",
        default=None,
        help="simulated start, RFC 3339 (default: computed from the wall clock so that "
        "the history ends in the past)",
    )
    p.add_argument(
        "--duration-days",
        type=float,
        default=None,
        help="stop after this much simulated time (default: run until stopped)",
    )
    p.add_argument("--resolution-kwh", type=float, default=0.001, help="register resolution (kWh)")
    p.add_argument(
        "--missing", type=float, default=0.01, help="share of readings the meters never send"
    )
    p.add_argument("--duplicates", type=float, default=0.005, help="share of messages sent twice")
    p.add_argument("--disorder", type=float, default=0.01, help="share of messages sent late")
    p.add_argument(
        "--registry-out", type=Path, default=None, help="also write the fleet's registry CSV here"
    )
    p.add_argument("--topic-root", default="meters", help="first level of the telemetry topics")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backfill-days",
        type=float,
        default=35.0,
        help="days of history loaded in bulk at start (through the ingest validation, not "
        "over MQTT), so that the first evaluation has enough data",
    )
    p.add_argument(
        "--catch-up-hours",
        type=float,
        default=24.0,
        help="simulated hours between the end of the history and now, published live over "
        "MQTT at --speed; after that the fleet runs in real time",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per wall second while catching up (never ahead of now)",
    )
    p.add_argument(
        "--evaluate-every-min",
        type=float,
        default=5.0,
        help="evaluate right after the history is loaded, then every this many minutes",
    )


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backfill-days",
        type=float,
        default=1.0,
        help="days of history published at once over MQTT (QoS 1, as fast as the broker "
        "acknowledges) before the live stream",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per wall second after the backfill",
    )


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
    except StartupError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
