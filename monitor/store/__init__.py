"""Telemetry stores: `embedded` (SQLite) and `influxdb`, behind `ports.TelemetryStore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.core.ports import DayMarks, TelemetryStore

if TYPE_CHECKING:  # the settings tree imports the alert book, which imports this package
    from monitor.platform.config import StorageSettings
    from monitor.platform.metrics import Metrics


def open_store(
    settings: StorageSettings,
    metrics: Metrics,
    marks: DayMarks | None = None,
    spool: str = "spool",
) -> TelemetryStore:
    """Open the telemetry store the settings name; `marks` (the state) hears which
    (district, day)s of electricity readings each batch wrote, once they are readable.
    `spool`: the InfluxDB store's disk buffer, a folder of the data dir (one per writer
    that may run beside the service)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.backend == "influxdb":
        from monitor.store.influx import InfluxStore

        return InfluxStore(settings.influx, settings.data_dir / spool, metrics, marks)
    from monitor.store.embedded import EmbeddedStore

    return EmbeddedStore(settings.data_dir / "telemetry.sqlite", metrics, marks=marks)
