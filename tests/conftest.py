"""Fixtures running REAL services (mosquitto, InfluxDB 1.x + v2 adapter) on free ports.

A missing binary skips the test locally, but FAILS it when the ``CI`` environment
variable is set (CI must never silently skip these tests; scripts/test installs them).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# `tests.services` must be importable also under a bare `pytest` (which, unlike
# `python -m pytest`, does not put the repo root on sys.path).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from monitor.core.ports import TelemetryStore  # noqa: E402
from monitor.platform.config import InfluxSettings  # noqa: E402
from monitor.platform.metrics import Metrics  # noqa: E402
from monitor.store.embedded import EmbeddedStore  # noqa: E402
from monitor.store.influx import InfluxStore  # noqa: E402
from monitor.store.state import SqliteState  # noqa: E402
from tests.services import (  # noqa: E402
    InfluxDB1,
    InfluxStack,
    InfluxV2Adapter,
    Mosquitto,
    PostgreSQL,
    find_influxd,
    find_mosquitto,
    find_postgres,
)


def _require(find: Callable[[], str | None], binary: str, package: str) -> None:
    if find() is not None:
        return
    msg = f"{binary} not installed (apt-get install {package}, or run scripts/test)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started mosquitto broker on 127.0.0.1:<free port>, with persistence in tmp_path."""
    _require(find_mosquitto, "mosquitto", "mosquitto")
    broker = Mosquitto(tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxStack]:
    """A started InfluxDB 1.x with database ``meters`` behind a started v2 adapter.

    ``.url`` is the adapter (v2 API: org "monitor", bucket "meters/autogen",
    token "test-token"); ``.server`` is the InfluxDB1; ``.query(q)`` runs InfluxQL on
    ``meters`` directly against the server (times in epoch ms).
    """
    _require(find_influxd, "influxd", "influxdb")
    server = InfluxDB1(tmp_path / "influxdb")
    adapter: InfluxV2Adapter | None = None
    try:
        server.start()
        adapter = InfluxV2Adapter(server.url)  # after start(): the port is final
        stack = InfluxStack(server=server, adapter=adapter)
        server.create_database(stack.db)
        adapter.start()
        yield stack
    finally:
        if adapter is not None:
            adapter.stop()
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgreSQL]:
    """One PostgreSQL server for the whole session (initdb takes seconds); each test
    gets its own schema in it (`postgres_url`)."""
    _require(find_postgres, "initdb", "postgresql")
    server = PostgreSQL()
    try:
        server.start()
        server.create_database("monitor_tests")
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgreSQL) -> str:
    """The URL of a fresh, empty schema (as good as a new database, in milliseconds):
    everything the code under test creates lands in it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    postgres_server.psql(f"CREATE SCHEMA {schema}", "monitor_tests")
    return f"{postgres_server.url('monitor_tests')}?options=-csearch_path%3D{schema}"


@dataclass
class Stores:
    """A telemetry store that marks the days it writes in a SQLite state, and the state."""

    store: TelemetryStore
    state: SqliteState


@pytest.fixture(params=["embedded", "influxdb"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """Each telemetry store in turn (embedded, a real InfluxDB), marking a SQLite state."""
    state = SqliteState(tmp_path / "state.sqlite")
    if request.param == "embedded":
        store: TelemetryStore = EmbeddedStore(tmp_path / "telemetry.sqlite", Metrics(), marks=state)
    else:
        stack: InfluxStack = request.getfixturevalue("influxdb")
        settings = InfluxSettings(
            url=stack.url, token=stack.token, org=stack.org, bucket=stack.bucket, retry_max_s=0.5
        )
        store = InfluxStore(settings, tmp_path / "spool", Metrics(), state)
    yield Stores(store, state)
    store.close()
    state.close()
