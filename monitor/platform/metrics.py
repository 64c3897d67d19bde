"""Prometheus metrics of one service instance, on a registry passed in (never global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """Every metric the service exposes; make a fresh one per service or test.

    metrics = Metrics()
    metrics.received.labels(kind="elec").inc()
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter(
            "monitor_messages_received", "MQTT messages received", ["kind"], registry=r
        )
        self.rejected = Counter(
            "monitor_messages_rejected",
            "Messages refused and sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.ignored = Counter(
            "monitor_messages_ignored", "Messages on our own command topics", registry=r
        )
        self.written = Counter(
            "monitor_points_written",
            "Points durably accepted by the telemetry store, by measurement",
            ["measurement"],
            registry=r,
        )
        self.flushed = Counter(
            "monitor_points_flushed", "Points delivered from the spool to InfluxDB", registry=r
        )
        self.buffered = Gauge(
            "monitor_store_buffered_points", "Points spooled on disk awaiting InfluxDB", registry=r
        )
        self.dropped = Counter(
            "monitor_store_dropped_points",
            "Points dropped because the spool hit its bound",
            registry=r,
        )
        self.store_errors = Counter(
            "monitor_store_errors",
            "Failed store writes and flushes (retried)",
            ["backend"],
            registry=r,
        )
        self.deadletters = Counter(
            "monitor_deadletters_published",
            "Messages published to the dead-letter topic",
            registry=r,
        )
        self.ingest_lag = Histogram(
            "monitor_ingest_lag_seconds",
            "From MQTT receipt to storage and acknowledgement, oldest message of each batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            "monitor_ingest_batch_size",
            "Messages per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.ingest_rate = Gauge(
            "monitor_messages_per_minute",
            "MQTT messages received per minute over the last housekeeping interval",
            registry=r,
        )
        self.last_event_ts = Gauge(
            "monitor_last_event_timestamp_seconds",
            "Newest telemetry event time seen (event time, not wall clock)",
            registry=r,
        )
        self.broker_connected = Gauge(
            "monitor_broker_connected", "1 while the worker's broker connection is up", registry=r
        )
        self.config_reloads = Counter(
            "monitor_config_reloads",
            "Config file changes taken (ok) or refused (the previous version stays)",
            ["file", "result"],
            registry=r,
        )
        self.unregistered = Gauge(
            "monitor_unregistered_meters",
            "Meters sending telemetry but not in the registry",
            registry=r,
        )
        self.state_available = Gauge(
            "monitor_state_available",
            "1 while the state store (the shared database of a cluster) answers",
            registry=r,
        )
        self.marks_pending = Gauge(
            "monitor_day_marks_pending",
            "Written (district, day)s not yet marked in the shared state (it was away); "
            "kept on disk and sent when it answers",
            registry=r,
        )
        self.passes = Counter(
            "monitor_evaluation_partitions",
            "Evaluation partitions this worker finished, by stage",
            ["stage"],
            registry=r,
        )

    def received_total(self) -> float:
        """Messages received, all kinds."""
        return sum(
            sample.value
            for family in self.received.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )


@dataclass
class RateSampler:
    """Per-minute rate of a counter between consecutive samples (for pages, not alerting).

    rate = RateSampler(); rate.sample(total, time.monotonic()) every interval.
    """

    _last: tuple[float, float] | None = None

    def sample(self, total: float, now: float) -> float | None:
        """The rate since the previous sample; None on the first one or a counter reset."""
        last, self._last = self._last, (total, now)
        if last is None or now <= last[1] or total < last[0]:
            return None
        return (total - last[0]) / (now - last[1]) * 60.0
