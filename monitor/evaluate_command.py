"""`monitor evaluate`: one pass, the same one the service runs, printed as a table.

While the service is up, the command asks it (`POST /api/evaluate` on the
configured API): its evaluator is the one that publishes decisions, keeps the
alert book and notifies, and one pass runs at a time. When nothing answers
there, the command runs the whole pass itself: decisions stored and published
(retained) to the configured broker when it is reachable, alerts folded into
the alert book, notifications delivered or left in the durable outbox for the
service to deliver when it starts.
"""

from __future__ import annotations

import getpass
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from monitor.alerts.book import AlertBook, Change
from monitor.alerts.notifier import Notifier
from monitor.core.clock import HOUR_MS
from monitor.core.decision import decision_from_dict
from monitor.core.ports import AuditEntry, AuditLog
from monitor.core.rulebook import load_rules
from monitor.evaluation.report import print_evaluation, print_report
from monitor.evaluation.runner import Evaluator, decision_publisher, future_as_of
from monitor.platform.config import Settings, split_host_port
from monitor.platform.metrics import Metrics
from monitor.platform.mqtt import BrokerAddress, PublishLink, parse_broker_url
from monitor.service import day_summaries
from monitor.store import open_store
from monitor.store.backends import open_state
from monitor.taxi.tariff import load_tariffs

# How long the command waits for a TCP connection to the API before it concludes
# that no service runs there, and for the broker before it publishes nothing.
CONNECT_TIMEOUT_S = 3.0
# A pass over a large fleet takes minutes; the service answers when it is done.
PASS_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Request:
    """What the user asked for."""

    as_of: str | None
    force: bool
    verbose: bool


def api_url(settings: Settings) -> str:
    """The base URL of the configured API, as a client on this host reaches it."""
    host, port = split_host_port(settings.api.http)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ask_service(
    url: str, req: Request, out: TextIO, err: TextIO, token: str | None = None
) -> int | None:
    """Have the running service evaluate; None when no service answers at `url`.
    `token`: an operator's API token, when the service has an access file."""
    params: dict[str, Any] = {"decisions": "all" if req.verbose else "findings"}
    if req.as_of is not None:
        params["as_of"] = req.as_of
    if req.force:
        params["force"] = "true"
    timeout = httpx.Timeout(PASS_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = httpx.post(f"{url}/api/evaluate", params=params, timeout=timeout, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return None
    if r.status_code != 200:
        detail = _detail(r)
        err.write(f"{url}: evaluation refused ({r.status_code}): {detail}\n")
        return 1
    body = r.json()
    found = body.pop("decisions", {"meters": [], "lots": []})
    meters = [decision_from_dict(d) for d in found["meters"]]
    lots = [decision_from_dict(d) for d in found["lots"]]
    print_report(body, meters, lots, out, req.verbose)
    out.write(
        f"\nevaluated by the running service at {url}: its decisions are published "
        "and its alerts raised and notified there\n"
    )
    return 0


def _audit_run(audit: AuditLog, summary: dict[str, Any]) -> None:
    """The pass run here is a change like any other: one audit record, by the OS account."""
    actor = f"{getpass.getuser()} (command line)"
    audit.append(AuditEntry(actor, "cli", "evaluation.run", "fleet", summary))


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text[:500]


def broker_address(settings: Settings) -> BrokerAddress:
    """The configured broker, or where the embedded one listens when the service runs."""
    if settings.mqtt.url:
        return parse_broker_url(settings.mqtt.url, *settings.mqtt.tls_files())
    host, port = split_host_port(settings.mqtt.embedded)
    return BrokerAddress("127.0.0.1" if host in ("0.0.0.0", "") else host, port)


def run_here(
    settings: Settings,
    req: Request,
    out: TextIO,
    err: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    """The whole pass in this process, as the service's: store, publish, alert, notify."""
    book = load_rules(settings.rules_file)
    tariffs = load_tariffs(settings.tariffs_file, settings.scheduling.timezone)
    data = settings.storage.data_dir
    backend = open_state(settings.state, data, f"monitor-evaluate-{os.getpid()}")
    state = backend.state
    summaries = state if day_summaries(settings) else None
    # A pass here may replay the spool: what it writes is marked as the service's writes.
    store = open_store(settings.storage, Metrics(), marks=summaries)
    alerts = AlertBook(backend.alerts, int(settings.alerts.clear_after_h * HOUR_MS))
    address = broker_address(settings)
    link = PublishLink(address, f"monitor-evaluate-{os.getpid()}")
    reachable = link.connect(CONNECT_TIMEOUT_S)
    notifier = Notifier(settings.alerts.routing, backend.outbox, link.publish)
    changes: Counter[str] = Counter()

    def notify(batch: Sequence[Change]) -> None:
        changes.update(c.action for c in batch)
        notifier.submit(batch)

    root = settings.mqtt.decisions_topic_root
    evaluator = Evaluator(
        store,
        state,
        decision_publisher(link.publish, root) if reachable else None,
        lambda: tariffs,
        alerts,
        notify,
        zone=settings.scheduling.zone,
        summaries=summaries,
    )
    if backend.database is not None:
        # The cluster's state: take part in its pass as a worker would (a running pass
        # for the same as_of is joined, not run a second time).
        from monitor.evaluation.cluster import ClusterPasses, ClusterSettings
        from monitor.store.postgres.passes import PostgresPasses

        cluster = ClusterSettings(
            f"monitor-evaluate-{os.getpid()}", settings.state.lease_s, settings.state.partition_size
        )
        evaluator.use_cluster(
            ClusterPasses(evaluator, PostgresPasses(backend.database), cluster, backend.atomic)
        )
    try:
        as_of = _as_of(req, evaluator, clock, err)
        if as_of is None:
            return 1
        result = evaluator.run(as_of, book)
        _audit_run(backend.audit, result.summary())
        print_evaluation(result, out, verbose=req.verbose)
        delivered = _deliver(notifier) if reachable else 0
        pending = notifier.pending()
    finally:
        notifier.close()
        unacked = link.close()
        store.close()
        backend.close()
    _footer(out, address, reachable, unacked, changes, delivered, pending)
    return 0


def _as_of(
    req: Request, evaluator: Evaluator, clock: Callable[[], float], err: TextIO
) -> int | None:
    from monitor.core.clock import parse_ts

    if req.as_of is None:
        found = evaluator.default_as_of()
        if found is None:
            err.write("no telemetry stored yet and no --as-of: nothing to evaluate\n")
        return found
    as_of = parse_ts(int(req.as_of) if req.as_of.lstrip("-").isdigit() else req.as_of)
    why = None if req.force else future_as_of(as_of, int(clock() * 1000))
    if why is not None:
        err.write(why.replace("force=true", "--force") + "\n")
        return None
    return as_of


def _deliver(notifier: Notifier) -> int:
    delivered = 0
    for _ in range(100):
        sent = notifier.tick()
        delivered += sent
        if sent == 0 or notifier.pending() == 0:
            break
    return delivered


def _footer(
    out: TextIO,
    address: BrokerAddress,
    reachable: bool,
    unacked: int,
    changes: Counter[str],
    delivered: int,
    pending: int,
) -> None:
    out.write("\nno monitor service answered: this process ran the pass itself\n")
    if not reachable:
        out.write(
            f"decisions not published: no broker at {address.url} "
            "(the service publishes them with its next pass)\n"
        )
    elif unacked:
        out.write(f"decisions published to {address.url}; {unacked} not acknowledged\n")
    else:
        out.write(f"decisions published to {address.url}\n")
    summary = ", ".join(f"{n} {a}" for a, n in sorted(changes.items())) or "no change"
    out.write(
        f"alerts: {summary}; notifications: {delivered} delivered, {pending} left in the "
        "outbox for the service to deliver\n"
    )
