"""Wiring: broker, store, state, ingest worker, scheduler and API of one process."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from fastapi import FastAPI

from monitor.alerts.book import AlertBook, Change
from monitor.alerts.mismatch import MISMATCH_RULES, mismatch_conditions
from monitor.alerts.notifier import Notifier
from monitor.alerts.offline import OFFLINE_RULES, offline_conditions
from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.api.guard import unruled_routes
from monitor.api.web import mount_web
from monitor.core.clock import HOUR_MS, format_ts
from monitor.core.ports import (
    AuditEntry,
    AuditLog,
    DayMarks,
    RulesShelf,
    StateStore,
    StateUnavailable,
    TelemetryStore,
)
from monitor.core.regions import RegionIndex
from monitor.core.rulebook import RuleBook, load_rules
from monitor.evaluation.cluster import STAGES, ClusterPasses, ClusterSettings
from monitor.evaluation.export import exporter
from monitor.evaluation.runner import Evaluator, decision_publisher
from monitor.evaluation.shadow import FileShelf, PromotedRules, RulesDesk
from monitor.ingest.worker import IngestWorker
from monitor.platform.access import AccessBook, load_access_or_none
from monitor.platform.broker import EmbeddedBroker
from monitor.platform.config import Settings, is_loopback, split_host_port
from monitor.platform.listen import StartupError, listen_socket
from monitor.platform.metrics import Metrics, RateSampler
from monitor.platform.mqtt import BrokerAddress, parse_broker_url
from monitor.platform.reload import HotFile
from monitor.store import open_store
from monitor.store.backends import StateBackend, open_state
from monitor.store.marks import PendingMarks
from monitor.store.postgres.passes import PostgresPasses
from monitor.taxi.tariff import TariffBook, load_tariffs

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The running parts, for the API and for tests."""

    address: BrokerAddress
    store: TelemetryStore
    state: StateStore
    worker: IngestWorker
    rules: HotFile[RuleBook]
    tariffs: HotFile[TariffBook]
    evaluator: Evaluator
    alerts: AlertBook
    notifier: Notifier
    backend: StateBackend
    access: HotFile[AccessBook | None]
    broker: EmbeddedBroker | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def audit(self) -> AuditLog:
        """The audit log (beside the state: one hash chain for the whole cluster)."""
        return self.backend.audit

    @property
    def worker_id(self) -> str:
        """This worker in the cluster's records (its MQTT client id)."""
        return str(self.extra.get("worker_id", "monitor"))


def day_summaries(settings: Settings) -> bool:
    """Whether passes may keep day summaries: every writer of readings to the telemetry
    store must mark the state the passes read, which workers sharing InfluxDB with a
    state file each do not (a day another worker wrote would never be re-read)."""
    s = settings
    if not s.scheduling.day_summaries:
        return False
    if s.state.url is None and s.mqtt.shared_group and s.storage.backend == "influxdb":
        log.warning(
            "day summaries off: workers of the shared group %s write to one InfluxDB and "
            "each marks only its own state file (share the state: state.url)",
            s.mqtt.shared_group,
        )
        return False
    return True


class Service:
    """One monitor process.

    service = Service(settings); service.start(); service.serve_http()  # blocks
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is the receive clock (epoch s): what ingest validates timestamps and
        the API validates a requested `as_of` against; no decision reads it."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._mismatch_counts: dict[str, int] = {}  # meter → mismatches already alerted
        self.parts: Components | None = None
        self._scheduler = BackgroundScheduler(timezone=settings.scheduling.timezone)
        self._http: uvicorn.Server | None = None
        self._http_socket: socket.socket | None = None
        self._http_thread: threading.Thread | None = None
        self._reported: dict[Path, int] = {}
        self._started = time.monotonic()
        self._ingest_rate = RateSampler()
        self._notify: Callable[[Sequence[Change]], None] = lambda changes: None
        self._board: PostgresPasses | None = None

    @property
    def data_dir(self) -> Path:
        return self.settings.storage.data_dir

    def start(self) -> Components:
        """Start everything but the HTTP server; config files are validated first."""
        s = self.settings
        check_exposure(s)
        rules: HotFile[RuleBook] = HotFile(s.rules_file, load_rules)
        tariffs = HotFile(s.tariffs_file, partial(load_tariffs, zone=s.scheduling.timezone))
        access = HotFile(s.access_file, load_access_or_none)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        broker, address, mqtt = None, None, s.mqtt
        if s.mqtt.url is None:
            broker = EmbeddedBroker(s.mqtt.embedded)
            broker.start()
            address = BrokerAddress(broker.client_host, broker.port)
            # amqtt speaks MQTT 3.1.1 and has no shared subscriptions.
            mqtt = s.mqtt.model_copy(update={"protocol": "3.1.1", "shared_group": None})
        else:
            address = parse_broker_url(s.mqtt.url, *s.mqtt.tls_files())
        backend = open_state(s.state, self.data_dir, mqtt.session_id)
        state = backend.state
        summaries = day_summaries(s)
        # The store marks the (district, day)s each batch wrote in the state, once readable:
        # what lets a pass re-read only those days (`summaries=state` below). A shared
        # state's outage must not hold telemetry back: marks wait on disk meanwhile.
        marks: DayMarks | None = None
        if summaries:
            marks = (
                PendingMarks(backend.ingest, self.data_dir / "pending-marks.json", self.metrics)
                if backend.shared
                else state
            )
        store = open_store(s.storage, self.metrics, marks=marks)
        worker = IngestWorker(
            mqtt, address, store, backend.ingest, self.metrics, self.clock, s.ingest
        )
        worker.start()
        publish_decision = decision_publisher(worker.publish, s.mqtt.decisions_topic_root)

        alerts = AlertBook(backend.alerts, int(s.alerts.clear_after_h * HOUR_MS))

        notifier = Notifier(s.alerts.routing, backend.outbox, worker.publish, owner=mqtt.session_id)

        def notify(changes: Sequence[Change]) -> None:
            notifier.submit(changes)
            self._wake_notifier()

        shelf = rules_shelf(backend, self.data_dir)
        if shelf.shared:  # a promotion through any worker is the cluster's rules
            rules = PromotedRules(s.rules_file, load_rules, shelf)
        desk = RulesDesk(
            s.rules_file,
            self.data_dir,
            in_force=lambda: rules.current,
            reload=rules.check,
            shelf=shelf,
        )
        evaluator = Evaluator(
            store,
            state,
            publish_decision,
            lambda: tariffs.current,
            alerts,
            notify,
            zone=s.scheduling.zone,
            export=exporter(
                store, s.scheduling.zone, lambda: RegionIndex.from_rows(state.registry_rows())
            ),
            shadow=desk,
            summaries=state if summaries else None,
        )
        self.parts = Components(
            address,
            store,
            state,
            worker,
            rules,
            tariffs,
            evaluator,
            alerts,
            notifier,
            backend,
            access,
            broker,
        )
        self.parts.extra["worker_id"] = mqtt.session_id
        if backend.database is not None:
            self._board = PostgresPasses(backend.database)
            cluster = ClusterSettings(mqtt.session_id, s.state.lease_s, s.state.partition_size)
            evaluator.use_cluster(
                ClusterPasses(
                    evaluator,
                    self._board,
                    cluster,
                    backend.atomic,
                    lambda stage: self.metrics.passes.labels(stage=STAGES[stage]).inc(),
                )
            )
            # A pass whose workers died or restarted is taken up again by whoever is here.
            self._scheduler.add_job(
                _waiting(self.help_passes),
                "interval",
                seconds=max(1.0, min(5.0, s.state.lease_s / 4)),  # one small query
                id="passes",
                max_instances=1,
                coalesce=True,
            )
        if isinstance(marks, PendingMarks):
            self._scheduler.add_job(
                marks.retry, "interval", seconds=5, id="marks", max_instances=1, coalesce=True
            )
        self._scheduler.add_job(
            _waiting(self._deliver),
            "interval",
            seconds=2,
            id="notify",
            max_instances=1,
            coalesce=True,
        )
        self.parts.extra["rules_desk"] = desk
        self._scheduler.add_job(
            _waiting(self._housekeeping),
            "interval",
            seconds=30,
            id="housekeeping",
            next_run_time=datetime.now(UTC),  # the ingest rate's first sample
        )
        self._notify = notify
        self._scheduler.add_job(_waiting(self.check_offline), "interval", seconds=60, id="offline")
        self._scheduler.add_job(
            _waiting(self.check_mismatches), "interval", seconds=30, id="mismatch"
        )
        if s.scheduling.evaluate_cron:
            trigger = CronTrigger.from_crontab(s.scheduling.evaluate_cron, s.scheduling.timezone)
            self._scheduler.add_job(_waiting(self.evaluate_latest), trigger, id="evaluate")
        self._scheduler.add_job(
            _waiting(self._reload), "interval", seconds=s.scheduling.rules_reload_s, id="reload"
        )
        self._scheduler.add_job(
            _waiting(self.purge_audit),
            "interval",
            hours=24,
            id="audit-retention",
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()
        if access.current is None:
            log.warning(
                "open mode: no access file (%s), every page and change is open to anyone "
                "who reaches %s; this is allowed on a loopback address only",
                s.access_file,
                s.api.http,
            )
        else:
            log.info("access file %s: %d token(s)", s.access_file, len(access.current.names))
        log.info(
            "rules %s, %d tariff(s); telemetry store %s; state %s; broker %s as %s",
            rules.current.version,
            len(tariffs.current),
            s.storage.backend,
            backend.database.where if backend.database else "embedded",
            address.url,
            mqtt.session_id,
        )
        return self.parts

    def _reload(self) -> None:
        if self.parts is None:
            return
        parts = self.parts
        hots: tuple[tuple[str, HotFile[Any], Callable[[Any], dict[str, Any]]], ...] = (
            ("rules.reload", parts.rules, lambda book: {"version": book.version}),
            ("tariffs.reload", parts.tariffs, lambda book: {"versions": sorted(book)}),
            ("access.reload", parts.access, _access_summary),
        )
        for action, hot, summary in hots:
            before = summary(hot.current)
            changed = hot.check()
            if changed:
                detail = {"file": str(hot.path), "before": before, "after": summary(hot.current)}
                parts.audit.append(AuditEntry("service", "system", action, hot.path.name, detail))
                self.metrics.config_reloads.labels(file=hot.path.name, result="ok").inc()
            elif hot.last_error is not None and hot.failures > self._reported.get(hot.path, 0):
                self._reported[hot.path] = hot.failures
                self.metrics.config_reloads.labels(file=hot.path.name, result="refused").inc()

    def evaluate_latest(self) -> dict[str, Any] | None:
        """A scheduled pass, as of the latest telemetry time (never the wall clock).

        In a cluster every worker's schedule fires; the pass of this minute (the
        schedule's slot, a crontab line has no finer step) runs once, shared.
        """
        if self.parts is None:
            return None
        slot = datetime.now(UTC).replace(second=0, microsecond=0).isoformat()
        summary = self.parts.evaluator.run_scheduled(slot, self.parts.rules.current)
        if summary is None:
            log.info("scheduled evaluation skipped: no telemetry yet")
            return None
        log.info("evaluation as of %s: %s", summary["as_of"], summary["meter_decisions"])
        if self._first("evaluation.audit", slot):  # one record for the cluster's one pass
            self.parts.audit.append(
                AuditEntry("service (schedule)", "system", "evaluation.run", "fleet", summary)
            )
        return summary

    def help_passes(self) -> None:
        """Take part in a running pass of the cluster (no-op on the embedded state)."""
        if self.parts is not None:
            self.parts.evaluator.help_running(self.parts.rules.current)

    def _once(self, job: str, period_s: int) -> bool:
        """In a cluster, whether this worker runs this period's `job` (the first to ask)."""
        return self._first(job, str(int(time.time() // period_s)))

    def _first(self, job: str, slot: str) -> bool:
        """In a cluster, whether this worker is the first to ask for `job` at `slot`."""
        if self._board is None or self.parts is None:
            return True
        return self._board.once(job, slot, self.parts.worker_id)

    def purge_audit(self) -> int:
        """Drop audit records older than `audit.retention_days` (daily); returns how many."""
        if self.parts is None:
            return 0
        if not self._once("audit-retention", 86_400):
            return 0  # another worker of the cluster purges today
        keep_ms = int(self.settings.audit.retention_days * 86_400_000)
        return self.parts.audit.purge(format_ts(int(time.time() * 1000) - keep_ms))

    def schedule_evaluation(self, every_s: float) -> None:
        """Also evaluate every `every_s` seconds (the demo's short schedule), beside the cron."""
        self._scheduler.add_job(
            _waiting(self.evaluate_latest),
            "interval",
            seconds=every_s,
            id="evaluate-every",
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )

    def _deliver(self) -> None:
        """Drain the notification outbox: tick until nothing more goes out."""
        if self.parts is None:
            return
        for _ in range(100):
            if self.parts.notifier.tick() == 0 or self.parts.notifier.pending() == 0:
                break

    def _wake_notifier(self) -> None:
        # Deliver now rather than at the next 2 s tick (the tick stays as the
        # fallback for retries, group windows and escalations).
        if self._scheduler.running and self._scheduler.get_job("notify") is not None:
            self._scheduler.modify_job("notify", next_run_time=datetime.now(UTC))

    def check_offline(self) -> int:
        """Raise or clear offline alerts as of the newest telemetry; returns changes made."""
        parts, cfg = self.parts, self.settings.alerts.offline
        if parts is None or not parts.worker.connected:
            return 0  # our own silence says nothing about the meters
        if time.monotonic() - self._started < cfg.grace_s:
            return 0  # after a restart the backlog has not caught up yet
        if not self._once("offline", 60):
            return 0  # another worker checks this minute
        as_of = parts.state.latest_event_ts()
        if as_of is None:
            return 0
        conditions = offline_conditions(parts.state.all_seen(), as_of, cfg)
        changes = parts.alerts.observe(conditions, as_of, OFFLINE_RULES)
        if changes:
            self._notify(changes)
        return len(changes)

    def check_mismatches(self) -> int:
        """Alert on registered meters heard repeatedly under another district; changes made.

        A meter's condition is observed again only when new mismatched messages
        arrived since the last check, so its alert's `count` follows the evidence
        and it resolves once they stop (after `alerts.clear_after_h` of event time).
        """
        parts = self.parts
        if parts is None or not self._once("mismatch", 30):
            return 0
        cfg = self.settings.ingest.district_mismatch
        rows = parts.state.mismatches()
        totals: dict[str, int] = {}
        for row in rows:
            totals[row.meter] = totals.get(row.meter, 0) + row.messages
        fresh = [r for r in rows if totals[r.meter] != self._mismatch_counts.get(r.meter)]
        conditions = mismatch_conditions(fresh, cfg)
        self._mismatch_counts = totals
        as_of = max([c.at_ms for c in conditions] + [parts.state.latest_event_ts() or 0], default=0)
        if as_of == 0:
            return 0
        changes = parts.alerts.observe(conditions, as_of, MISMATCH_RULES)
        if changes:
            self._notify(changes)
        return len(changes)

    def _housekeeping(self) -> None:
        rate = self._ingest_rate.sample(self.metrics.received_total(), time.monotonic())
        if rate is not None:
            self.metrics.ingest_rate.set(rate)
        if self.parts is not None:
            self.metrics.unregistered.set(self.parts.state.count_unregistered())

    def app(self) -> FastAPI:
        """The API over the running parts."""
        assert self.parts is not None, "start() first"
        parts = self.parts
        ctx = ApiContext(
            self.settings,
            parts.state,
            parts.store,
            self.metrics,
            lambda: parts.worker.connected,
            parts.evaluator,
            lambda: parts.rules.current,
            parts.worker.publish,
            parts.alerts,
            self._notify,
            self.clock,
            rules_desk=parts.extra.get("rules_desk"),
            access=lambda: parts.access.current,
            audit=parts.audit,
        )
        app = create_app(ctx)
        mount_web(app, ctx)
        missing = unruled_routes(app)
        if missing:  # a route nobody may call is a bug, found here rather than by a user
            raise RuntimeError(f"routes without an access rule (api/guard.py): {missing}")
        return app

    def bind_http(self) -> None:
        """Take the API's port now: a port in use is refused (StartupError, one line)
        before the broker and the worker start, and no banner claims otherwise."""
        if self._http_socket is None:
            check_exposure(self.settings)
            host, port = split_host_port(self.settings.api.http)
            self._http_socket = listen_socket(
                host, port, "the API", "set MONITOR_HTTP to a free host:port"
            )

    def serve_http(self) -> None:
        """Serve the API until SIGINT/SIGTERM (in the main thread) or `stop()`."""
        self.bind_http()
        assert self._http_socket is not None
        host, port = split_host_port(self.settings.api.http)
        config = uvicorn.Config(self.app(), log_level="warning")
        self._http = uvicorn.Server(config)
        log.info("API on http://%s:%d (OpenAPI at /docs)", host, port)
        self._http.run(sockets=[self._http_socket])

    def serve_http_in_thread(self) -> threading.Thread:
        """Serve the API from a background thread (tests, demo)."""
        thread = threading.Thread(target=self.serve_http, name="http", daemon=True)
        thread.start()
        self._http_thread = thread
        return thread

    def stop(self) -> None:
        """Stop in reverse order: HTTP, scheduler, worker (drains), store, state, broker."""
        if self._http is not None:
            self._http.should_exit = True
        if self._http_thread is not None:
            # uvicorn closes its server on the way out; the socket must outlive that.
            self._http_thread.join(timeout=10)
            self._http_thread = None
        if self._http_socket is not None:
            self._http_socket.close()
            self._http_socket = None
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.parts is None:
            return
        self.parts.notifier.close()
        self.parts.worker.stop()
        self.parts.store.close()
        self.parts.backend.close()
        if self.parts.broker is not None:
            self.parts.broker.stop()
        self.parts = None


def _waiting(job: Callable[[], Any]) -> Callable[[], None]:
    """A scheduled job that, while the state store is unavailable, says so in one line
    and waits for its next run (instead of a traceback every run)."""

    def run() -> None:
        try:
            job()
        except StateUnavailable as exc:
            log.warning("%s waits for the state store: %s", job.__name__, exc)

    run.__name__ = job.__name__
    return run


def rules_shelf(backend: StateBackend, data_dir: Path) -> RulesShelf:
    """Where shadow rules and promotions live: the cluster's database, or the data dir."""
    if backend.database is None:
        return FileShelf(data_dir)
    from monitor.store.postgres.rules import PostgresShelf

    return PostgresShelf(backend.database)


def check_exposure(settings: Settings) -> None:
    """Refuse (StartupError) to serve a non-loopback address in open mode, or to start
    with an access file named that is not there."""
    host, port = split_host_port(settings.api.http)
    path = settings.access_file
    if settings.api.access_file is not None and not path.exists():
        raise StartupError(
            f"the access file {path} (MONITOR_ACCESS_FILE / api.access_file) does not exist"
        )
    if not path.exists() and not is_loopback(host):
        raise StartupError(
            f"refusing to serve {host}:{port} without an access file: anyone who reaches it "
            "could acknowledge alerts, post sample results and replace the registry. Create "
            f"{path} (tokens, roles, scopes: docs/configuration.md#access) or point "
            "MONITOR_ACCESS_FILE at one, or listen on 127.0.0.1 (MONITOR_HTTP) for open mode"
        )


def _access_summary(book: AccessBook | None) -> dict[str, Any]:
    """What the audit log keeps of an access file: who may do what (no hashes)."""
    if book is None:
        return {"open_mode": True}
    tokens = [{"name": t.name, "role": t.role, "scope": t.scope} for t in book.spec.tokens]
    return {"tokens": tokens, "oidc": book.spec.oidc is not None}
