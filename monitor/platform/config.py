"""Service settings: `config/monitor.yaml`, overridden by environment variables.

Precedence, lowest first: built-in defaults, `monitor.yaml`, the generic
`MONITOR_<SECTION>__<KEY>` variables, then the named variables of docs/configuration.md
(`ENV_ALIASES`). The environment is passed in, never read here, so a test or a
second worker can build settings side by side.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.alerts.offline import OfflineSettings
from monitor.alerts.routing import RoutingSettings
from monitor.core.yamlfile import (
    ConfigError,
    ConfigProblem,
    KeyPath,
    LoadedYaml,
    load_yaml,
    problems_from_validation,
)
from monitor.ingest.limits import IngestSettings
from monitor.taxi.tariff import DEFAULT_TIMEZONE, check_zone

# The named variables of docs/configuration.md and the setting each one overrides.
ENV_ALIASES: dict[str, KeyPath] = {
    "MONITOR_DATA_DIR": ("storage", "data_dir"),
    "MONITOR_MQTT_URL": ("mqtt", "url"),
    "MONITOR_EMBEDDED_MQTT": ("mqtt", "embedded"),
    "MONITOR_STORE": ("storage", "backend"),
    "MONITOR_INFLUX_URL": ("storage", "influx", "url"),
    "MONITOR_INFLUX_TOKEN": ("storage", "influx", "token"),
    "MONITOR_INFLUX_ORG": ("storage", "influx", "org"),
    "MONITOR_INFLUX_BUCKET": ("storage", "influx", "bucket"),
    "MONITOR_HTTP": ("api", "http"),
    "MONITOR_STATE_URL": ("state", "url"),
    "MONITOR_MQTT__SHARED_GROUP": ("mqtt", "shared_group"),
    "MONITOR_MQTT__CLIENT_ID": ("mqtt", "client_id"),
    "MONITOR_ACCESS_FILE": ("api", "access_file"),
}
CONFIG_DIR_VAR = "MONITOR_CONFIG"
_GENERIC = re.compile(r"^MONITOR_([A-Z0-9_]+?)__([A-Z0-9_]+(?:__[A-Z0-9_]+)*)$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.:\[\]-]*:\d{1,5}$")


def _check_host_port(value: str) -> str:
    if not _HOST_PORT.match(value):
        raise ValueError(f"expected host:port, got {value!r}")
    port = int(value.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return value


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: addresses no other machine reaches."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _path_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def split_host_port(value: str) -> tuple[str, int]:
    """`'127.0.0.1:1883'` → `('127.0.0.1', 1883)`."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    """Where telemetry comes from and how the worker holds its session."""

    url: str | None = Field(
        None, description="mqtt://[user:pass@]host:port or mqtts://; unset: embedded"
    )
    embedded: str = Field("127.0.0.1:1883", description="host:port of the embedded broker")
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="this worker's MQTT client id, under which the broker keeps its "
        "persistent session; unset: monitor-worker-1, or monitor-<hostname> in a "
        "shared group",
    )
    topic_root: str = Field("meters", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    shared_group: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]+$", description="MQTT 5 shared subscription group"
    )
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry_s: int = Field(7 * 86400, ge=0)
    keepalive_s: int = Field(30, ge=5, le=3600)
    receive_maximum: int = Field(1000, ge=1, le=65535)
    max_payload_bytes: int = Field(65536, ge=64)
    batch_max: int = Field(1000, ge=1, le=100_000)
    batch_wait_ms: int = Field(20, ge=0, le=10_000)
    seen_flush_s: float = Field(
        2.0, gt=0, le=300, description="how often meters seen are written to the state"
    )
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    ca_file: Path | None = Field(
        None,
        description="CA certificate(s) the broker's certificate must chain to (mqtts://); "
        "unset: the system's trusted CAs",
    )
    cert_file: Path | None = Field(None, description="client certificate (optional, mqtts://)")
    key_file: Path | None = Field(None, description="its private key")
    deadletter_topic: str = "monitor/deadletter"
    alerts_topic_root: str = "monitor/alerts"
    decisions_topic_root: str = "monitor/decisions"

    @field_validator("embedded")
    @classmethod
    def _embedded(cls, value: str) -> str:
        return _check_host_port(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("missing host")
        _ = parts.port  # raises ValueError on a bad port
        return value

    @model_validator(mode="after")
    def _client_pair(self) -> MqttSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def tls_files(self) -> tuple[str | None, str | None, str | None]:
        """(CA, client certificate, key) for an mqtts:// broker, as paths or None."""
        return _path_str(self.ca_file), _path_str(self.cert_file), _path_str(self.key_file)

    @property
    def session_id(self) -> str:
        """The client id in force: the configured one, else one that stays the same
        across restarts of this host (a persistent session's backlog waits for it)."""
        if self.client_id:
            return self.client_id
        if self.shared_group:
            return f"monitor-{socket.gethostname()}"[:64]
        return "monitor-worker-1"

    @property
    def subscription(self) -> str:
        """Topic filter the worker subscribes to (shared when a group is set)."""
        base = f"{self.topic_root}/#"
        return f"$share/{self.shared_group}/{base}" if self.shared_group else base


class InfluxSettings(_Section):
    """The InfluxDB the `influxdb` backend writes to (v2 API; 1.8+/2.x/3.x)."""

    url: str | None = None
    token: str = ""
    org: str = ""
    bucket: str = Field("meters", min_length=1, description="bucket, or db/rp on 1.x")
    timeout_s: float = Field(10.0, gt=0)
    flush_max_points: int = Field(5000, ge=1)
    retry_max_s: float = Field(30.0, gt=0)
    spool_max_mb: float = Field(1024.0, gt=0, description="disk buffer bound while down")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("InfluxDB url must be http:// or https://")
        return value.rstrip("/")


class StorageSettings(_Section):
    """Where telemetry and the service's own state are kept."""

    backend: Literal["embedded", "influxdb"] = "embedded"
    data_dir: Path = Path("./data")
    influx: InfluxSettings = InfluxSettings()

    @model_validator(mode="after")
    def _influx_needs_url(self) -> StorageSettings:
        if self.backend == "influxdb" and not self.influx.url:
            raise ValueError("backend influxdb needs influx.url (MONITOR_INFLUX_URL)")
        return self


class StateSettings(_Section):
    """Where the service's own state lives: registry, decisions, alerts, outbox, ledger."""

    url: str | None = Field(
        None,
        description="postgresql://user:pass@host:port/db, shared by every worker; "
        "unset: embedded SQLite in the data dir",
    )
    pool_size: int = Field(10, ge=1, le=500, description="connections per worker")
    timeout_s: float = Field(
        5.0, gt=0, le=300, description="wait for a connection before the state is unavailable"
    )
    lease_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="how long a worker holds an evaluation partition without a heartbeat; "
        "a dead worker's partitions are taken over after it",
    )
    partition_size: int = Field(
        50, ge=1, le=100_000, description="districts (or lots) per evaluation partition"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("the state URL must be postgresql://user:pass@host:port/db")
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError("missing host")
        _ = parts.port  # raises ValueError on a bad port
        return value


class ApiSettings(_Section):
    """The HTTP API."""

    http: str = "127.0.0.1:8080"
    page_default: int = Field(100, ge=1)
    page_max: int = Field(1000, ge=1)
    access_file: Path | None = Field(
        None,
        description="tokens, roles, scopes; unset: config/access.yaml if present, else open "
        "mode (allowed on a loopback address only)",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="a larger request body is refused (413)"
    )
    # A client guessing tokens is slowed to this many failures a minute, then answered
    # 429 until its oldest failure is a minute old.
    auth_failures_per_minute: int = Field(10, ge=1, le=10_000)

    @field_validator("http")
    @classmethod
    def _http(cls, value: str) -> str:
        return _check_host_port(value)


class SchedulingSettings(_Section):
    """Periodic work (apscheduler cron fields)."""

    @field_validator("evaluate_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if not value:
            return None
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger.from_crontab(value)  # raises ValueError with the reason
        return value

    evaluate_cron: str | None = Field(
        "15 2 * * *", description="crontab line of the evaluation pass; empty: only on request"
    )
    timezone: str = Field(
        DEFAULT_TIMEZONE,
        description="IANA zone of the cron line, of local days (daily loss) and of "
        "tariffs that name none",
    )
    day_summaries: bool = Field(
        True,
        description="passes read from the telemetry store only the days written since the "
        "last pass (and keep the others in the state); off: every pass reads its whole "
        "window. Only where every writer of readings marks the state the passes read: on "
        "a cluster's shared state (state.url) too; off by itself when workers share "
        "InfluxDB (mqtt.shared_group), each with its own state file",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @property
    def zone(self) -> ZoneInfo:
        """The configured zone."""
        return ZoneInfo(self.timezone)

    rules_reload_s: float = Field(5.0, gt=0, description="how often config files are re-read")


class AlertSettings(_Section):
    """Alert lifecycle and offline detection."""

    offline: OfflineSettings = OfflineSettings()
    routing: RoutingSettings = RoutingSettings()

    clear_after_h: float = Field(
        48.0, gt=0, description="event time a condition must stay absent before auto-resolve"
    )


class ModelCost(_Section):
    """What one meter model costs to replace and weighs when taken out."""

    unit_cost_cny: float | None = Field(None, ge=0)
    mass_kg: float | None = Field(None, gt=0)


class ImpactSettings(_Section):
    """Unit cost and mass of a replaced meter, for the policy impact report."""

    unit_cost_cny: float | None = Field(
        None,
        ge=0,
        description="replacement cost of a meter (device and fitting), CNY; no default: the "
        "project has no public figure to name, so cost is reported only where configured",
    )
    mass_kg: float = Field(
        0.176,
        gt=0,
        description="mass taken out per meter replaced: Shanghai's reported figures for its "
        "scheme (5.68 M meters kept, over 1 000 t of e-waste avoided) give 0.176 kg a meter, "
        "a lower bound; a model's own figure (models:) is better",
    )
    models: dict[str, ModelCost] = Field(
        default_factory=dict, description="per registry `model`: unit_cost_cny, mass_kg"
    )

    def of(self, model: str | None) -> tuple[float | None, float]:
        """(unit cost, mass) of a model, the defaults where it says nothing."""
        own = self.models.get(model or "")
        cost = own.unit_cost_cny if own and own.unit_cost_cny is not None else self.unit_cost_cny
        mass = own.mass_kg if own and own.mass_kg is not None else self.mass_kg
        return cost, mass


class AuditSettings(_Section):
    """The hash-chained audit log of every state change."""

    # GB/T 22239 level 2 and the verification rules ask for monitoring records kept
    # at least as long as a verification period can be extended: four years.
    retention_days: int = Field(
        1461, ge=1, description="records older than this are purged (default 4 years)"
    )


class Settings(_Section):
    """The whole frozen settings tree of one service process."""

    config_dir: Path = Path("config")
    mqtt: MqttSettings = MqttSettings()
    storage: StorageSettings = StorageSettings()
    state: StateSettings = StateSettings()
    api: ApiSettings = ApiSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    alerts: AlertSettings = AlertSettings()
    ingest: IngestSettings = IngestSettings()
    impact: ImpactSettings = ImpactSettings()
    audit: AuditSettings = AuditSettings()

    @property
    def access_file(self) -> Path:
        """The access file: `api.access_file` (MONITOR_ACCESS_FILE), else config/access.yaml."""
        return self.api.access_file or self.config_dir / "access.yaml"

    @property
    def rules_file(self) -> Path:
        return self.config_dir / "rules.yaml"

    @property
    def tariffs_file(self) -> Path:
        return self.config_dir / "tariffs.yaml"


def _set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(str(key))
        if not isinstance(child, dict):
            child = {}
            node[str(key)] = child
        node = child
    node[str(path[-1])] = None if value == "" else value


def env_overrides(env: Mapping[str, str]) -> dict[KeyPath, tuple[str, str]]:
    """Settings paths set by the environment → (variable, value); named variables win."""
    found: dict[KeyPath, tuple[str, str]] = {}
    for name, value in sorted(env.items()):
        match = _GENERIC.match(name)
        if match:
            path = (match.group(1).lower(), *match.group(2).lower().split("__"))
            found[path] = (name, value)
    for name, path in ENV_ALIASES.items():
        if name in env:
            found[path] = (name, env[name])
    return found


def config_dir_from_env(env: Mapping[str, str], given: Path | None = None) -> Path:
    """The config folder: an explicit `--config`, else MONITOR_CONFIG, else `config/`."""
    if given is not None:
        return given
    return Path(env.get(CONFIG_DIR_VAR) or "config")


def load_settings(config_dir: Path, env: Mapping[str, str]) -> Settings:
    """Read `monitor.yaml` in `config_dir` (optional) and apply environment overrides."""
    path = config_dir / "monitor.yaml"
    loaded: LoadedYaml | None = load_yaml(path) if path.exists() else None
    raw = loaded.data if loaded is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(str(path), 1, "", "expected a mapping of sections")])
    data = copy.deepcopy(raw)
    overrides = env_overrides(env)
    for key_path, (_, value) in overrides.items():
        _set_path(data, key_path, value)
    data["config_dir"] = str(config_dir)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_locate(exc, loaded, overrides, str(path))) from exc


def _locate(
    exc: ValidationError,
    loaded: LoadedYaml | None,
    overrides: Mapping[KeyPath, tuple[str, str]],
    source: str,
) -> list[ConfigProblem]:
    """Blame the environment variable when one set the failing key, else the file line."""
    out = []
    for problem, err in zip(
        problems_from_validation(exc, loaded, source), exc.errors(), strict=True
    ):
        loc = tuple(str(p) for p in err["loc"])
        var = next((v for p, (v, _) in overrides.items() if loc[: len(p)] == p), None)
        if var is not None:
            problem = ConfigProblem(f"environment {var}", None, problem.key, problem.reason)
        out.append(problem)
    return out
