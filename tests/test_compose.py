"""The docker compose deployment agrees with the contract and the code.

No Docker engine is needed: the compose file, the Dockerfile and the configs
they mount are read as text and cross-checked, so that `docker compose up`
is correct by construction (names, ports, tokens and paths line up).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCALE = ROOT / "deploy" / "compose.scale.yml"
DOCKERFILE = ROOT / "Dockerfile"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

NOT_FOR_COMPOSE = {"MONITOR_EMBEDDED_MQTT"}  # Mosquitto replaces the embedded broker

_SUBST = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


# --- helpers -----------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def resolve(value: Any, env: Mapping[str, str] | None = None) -> str:
    """Expand compose `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR`, `$$`.

    Variables not in `env` are unset, so the defaults written in the file apply.
    """
    env = env or {}

    def expand(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":?", "?"):
            raise AssertionError(f"required variable {name} is unset: {arg}")
        return arg if op in (":-", "-") else ""

    return _SUBST.sub(expand, str(value))


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in map or list form, as raw (unresolved) strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: v for k, v in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def resolved_environment(service: Mapping[str, Any]) -> dict[str, str]:
    return {k: resolve(v) for k, v in environment(service).items()}


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def container_ports(service: Mapping[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, Mapping):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, Mapping):
            result.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            source, target = str(entry).split(":")[:2]
            result.append((source, target))
    return result


def is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def mosquitto_settings() -> list[tuple[str, str]]:
    """(key, value) pairs of mosquitto.conf in file order, comments dropped."""
    pairs = []
    for line in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            pairs.append((key, value.strip()))
    return pairs


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in dockerfile_instructions():
        if word == "ENV":
            for item in shlex.split(args):
                name, eq, value = item.partition("=")
                if eq:
                    env[name] = value
    return env


def command_words(args: str) -> list[str]:
    """CMD / HEALTHCHECK CMD arguments in exec (JSON) or shell form, as words."""
    args = args.strip()
    if args.startswith("["):
        return [str(word) for word in json.loads(args)]
    return shlex.split(args)


# --- the variable names: the code's ENV_ALIASES and the documented table ---------------


def documented_variables() -> set[str]:
    """The variable names in the first table under `## Environment variables` of the docs."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    match = re.search(r"^## Environment variables$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{CONFIG_DOC} has no 'Environment variables' section"
    table = re.search(r"(?:^\|.*\n)+", match.group(1), re.M)
    assert table, f"no variable table in the 'Environment variables' section of {CONFIG_DOC}"
    names: set[str] = set()
    for row in table.group(0).splitlines():
        names.update(re.findall(r"`(MONITOR_[A-Z0-9_]+)`", row.split("|")[1]))
    assert names, f"no variable names in the first table of {CONFIG_DOC}"
    return names


def config_module() -> Any:
    """`monitor.config`, or None while it cannot be imported yet."""
    try:
        return importlib.import_module("monitor.platform.config")
    except ImportError:
        return None


def alias_variables() -> set[str] | None:
    """The variables `monitor.config` reads by name: `ENV_ALIASES` keys and the config folder.

    None while `monitor.config` or its `ENV_ALIASES` do not exist yet.
    """
    aliases = getattr(config_module(), "ENV_ALIASES", None)
    if aliases is None:
        return None
    config_dir_var = getattr(config_module(), "CONFIG_DIR_VAR", None)
    return set(aliases) | ({config_dir_var} if config_dir_var else set())


@pytest.fixture(scope="module")
def known_variables() -> set[str]:
    """The MONITOR_* names the code understands."""
    names = alias_variables()
    assert names, "monitor.platform.config has no ENV_ALIASES"
    return names


# --- fixtures for the files ----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict) and "services" in data
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    expected = {"mosquitto", "influxdb", "monitor", "prometheus", "grafana"}
    assert expected <= set(compose["services"])
    return dict(compose["services"])


@pytest.fixture(scope="module")
def monitor_env(services: dict[str, Any]) -> dict[str, str]:
    return resolved_environment(services["monitor"])


@pytest.fixture(scope="module")
def influx_init(services: dict[str, Any]) -> dict[str, str]:
    return resolved_environment(services["influxdb"])


# --- monitor environment against the contract -------------------------------------


def test_monitor_env_names_are_known_to_the_code(
    services: dict[str, Any], known_variables: set[str]
) -> None:
    env = environment(services["monitor"])
    unknown = set(env) - known_variables - _generic_keys(env)
    assert not unknown, f"monitor env has variables the code does not read: {unknown}"


def _generic_keys(env: dict[str, str]) -> set[str]:
    """MONITOR_<SECTION>__<KEY> variables whose key the settings have (generic rule)."""
    config = config_module()
    found = set()
    for name in env:
        paths = list(config.env_overrides({name: "x"}))
        if paths and name not in config.ENV_ALIASES:
            node: Any = config.Settings.model_fields
            for key in paths[0]:
                field = node.get(str(key)) if isinstance(node, dict) else None
                if field is None:
                    break
                node = getattr(field.annotation, "model_fields", {})
            else:
                found.add(name)
    return found


def test_monitor_sets_every_documented_variable(services: dict[str, Any]) -> None:
    missing = documented_variables() - NOT_FOR_COMPOSE - set(environment(services["monitor"]))
    assert not missing, f"monitor env lacks variables of docs/configuration.md: {missing}"


def test_documented_variables_are_the_code_aliases(known_variables: set[str]) -> None:
    documented = documented_variables()
    assert documented == known_variables, (
        f"docs/configuration.md lists {documented - known_variables} the code does not read; "
        f"the code reads {known_variables - documented} the docs do not list"
    )


def test_monitor_uses_influxdb_and_container_paths(monitor_env: dict[str, str]) -> None:
    assert monitor_env["MONITOR_STORE"] == "influxdb"
    assert monitor_env["MONITOR_CONFIG"] == "/app/config"
    assert monitor_env["MONITOR_DATA_DIR"] == "/data"


def test_monitor_volumes_cover_config_and_data(services: dict[str, Any]) -> None:
    targets = {t: s for s, t in mounts(services["monitor"])}
    assert targets.get("/app/config") == "./config"
    assert "/data" in targets
    read_only = [v for v in services["monitor"]["volumes"] if "/app/config" in str(v)]
    assert all(str(v).endswith(":ro") for v in read_only), "config must be mounted read-only"


def settings_for(env: Mapping[str, str]) -> Any:
    """The settings a worker with this environment would start with, using ./config."""
    config = config_module()
    if config is None or not hasattr(config, "load_settings"):
        pytest.skip("monitor.platform.config.load_settings is not available yet")
    return config.load_settings(ROOT / "config", dict(env))


def test_monitor_env_gives_valid_settings(monitor_env: dict[str, str]) -> None:
    settings = settings_for(monitor_env)
    assert settings.storage.backend == "influxdb"
    assert settings.storage.influx.url == monitor_env["MONITOR_INFLUX_URL"]
    assert settings.mqtt.url == monitor_env["MONITOR_MQTT_URL"]
    assert settings.api.http == monitor_env["MONITOR_HTTP"]
    assert str(settings.storage.data_dir) == monitor_env["MONITOR_DATA_DIR"]
    config_dir = config_module().config_dir_from_env(monitor_env)
    assert str(config_dir) == monitor_env["MONITOR_CONFIG"]


# --- InfluxDB: one org, bucket and token everywhere -----------------------------------


def test_influx_setup_mode(influx_init: dict[str, str]) -> None:
    assert influx_init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("USERNAME", "PASSWORD", "ORG", "BUCKET", "ADMIN_TOKEN"):
        assert influx_init[f"DOCKER_INFLUXDB_INIT_{key}"], f"empty INIT_{key}"
    assert "DOCKER_INFLUXDB_INIT_RETENTION" in influx_init
    assert len(influx_init["DOCKER_INFLUXDB_INIT_PASSWORD"]) >= 8, "influx refuses < 8 chars"


@pytest.mark.parametrize(
    ("monitor_var", "init_var"),
    [
        ("MONITOR_INFLUX_TOKEN", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"),
        ("MONITOR_INFLUX_ORG", "DOCKER_INFLUXDB_INIT_ORG"),
        ("MONITOR_INFLUX_BUCKET", "DOCKER_INFLUXDB_INIT_BUCKET"),
    ],
)
def test_monitor_influx_settings_equal_the_init_values(
    services: dict[str, Any], monitor_var: str, init_var: str
) -> None:
    monitor_raw = environment(services["monitor"])[monitor_var]
    init_raw = environment(services["influxdb"])[init_var]
    assert resolve(monitor_raw) == resolve(init_raw)
    # Same substitution, so they also agree whatever `.env` sets.
    assert monitor_raw == init_raw


def test_monitor_influx_url_names_the_influxdb_service(
    services: dict[str, Any], monitor_env: dict[str, str]
) -> None:
    url = urlsplit(monitor_env["MONITOR_INFLUX_URL"])
    assert url.hostname == "influxdb" and "influxdb" in services
    assert url.port in container_ports(services["influxdb"])
    assert services["influxdb"]["healthcheck"]["test"][-2:] == ["influx", "ping"]
    condition = services["monitor"]["depends_on"]["influxdb"]["condition"]
    assert condition == "service_healthy"


def grafana_datasource(uid: str) -> dict[str, Any]:
    sources = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    found = [s for s in sources if s["uid"] == uid]
    assert len(found) == 1, f"expected one datasource {uid} in {GRAFANA_DATASOURCES}"
    return dict(found[0])


def test_grafana_influx_datasource_equals_the_monitor_settings(
    services: dict[str, Any], monitor_env: dict[str, str]
) -> None:
    grafana_env = resolved_environment(services["grafana"])
    source = grafana_datasource("monitor-influxdb")
    assert source["jsonData"]["version"] == "Flux"
    assert source["url"] == monitor_env["MONITOR_INFLUX_URL"]
    values = {
        "MONITOR_INFLUX_ORG": source["jsonData"]["organization"],
        "MONITOR_INFLUX_BUCKET": source["jsonData"]["defaultBucket"],
        "MONITOR_INFLUX_TOKEN": source["secureJsonData"]["token"],
    }
    for var, raw in values.items():
        assert "${" in raw, f"{var} must come from the environment, not be written in"
        assert resolve(raw, grafana_env) == monitor_env[var], var


def test_grafana_influxql_datasource_reads_the_monitors_bucket(
    services: dict[str, Any], monitor_env: dict[str, str]
) -> None:
    grafana_env = resolved_environment(services["grafana"])
    source = grafana_datasource("monitor-influxql")
    assert source["type"] == "influxdb" and "version" not in source["jsonData"]  # InfluxQL
    assert source["url"] == monitor_env["MONITOR_INFLUX_URL"]
    # InfluxDB 2 serves InfluxQL on a bucket's virtual DBRP mapping: database = bucket.
    for raw in (source["database"], source["jsonData"]["dbName"]):
        assert resolve(raw, grafana_env) == monitor_env["MONITOR_INFLUX_BUCKET"]
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    token = resolve(source["secureJsonData"]["httpHeaderValue1"], grafana_env)
    assert token == f"Token {monitor_env['MONITOR_INFLUX_TOKEN']}"


def test_grafana_provisions_the_dashboards(services: dict[str, Any]) -> None:
    provider = load_yaml(ROOT / "deploy/grafana/provisioning/dashboards/monitor.yml")
    (only,) = provider["providers"]
    path = only["options"]["path"]
    sources = {target: source for source, target in mounts(services["grafana"])}
    assert (
        sources["/etc/grafana/provisioning/dashboards"]
        == "./deploy/grafana/provisioning/dashboards"
    )
    assert sources[path] == "./deploy/grafana/dashboards"
    assert sorted(p.name for p in (ROOT / "deploy/grafana/dashboards").glob("*.json"))
    uids = {s["uid"] for s in load_yaml(GRAFANA_DATASOURCES)["datasources"]}
    for board in (ROOT / "deploy/grafana/dashboards").glob("*.json"):
        body = json.loads(board.read_text("utf-8"))
        for panel in body["panels"]:
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, (board.name, panel["title"])


def test_grafana_prometheus_datasource(services: dict[str, Any]) -> None:
    url = urlsplit(grafana_datasource("monitor-prometheus")["url"])
    assert url.hostname == "prometheus"
    assert url.port in container_ports(services["prometheus"])


# --- MQTT, HTTP and scraping line up -------------------------------------------------


def test_mqtt_url_names_mosquitto_and_its_listener(
    services: dict[str, Any], monitor_env: dict[str, str]
) -> None:
    url = urlsplit(monitor_env["MONITOR_MQTT_URL"])
    assert url.scheme == "mqtts", "the worker reaches the broker over TLS"
    assert url.username == "monitor", "on its own least-rights account"
    assert monitor_env["MONITOR_MQTT__CA_FILE"].startswith("/app/mqtt-ca/")
    assert url.hostname == "mosquitto" and "mosquitto" in services
    listeners = {int(v.split()[0]) for k, v in mosquitto_settings() if k == "listener"}
    assert url.port in listeners
    assert url.port in container_ports(services["mosquitto"])


def test_monitor_publishes_its_http_port(
    services: dict[str, Any], monitor_env: dict[str, str]
) -> None:
    host, port = host_port(monitor_env["MONITOR_HTTP"])
    assert host == "0.0.0.0", "inside a container the API must listen on all interfaces"
    assert container_ports(services["monitor"]) == {port}


def test_prometheus_scrapes_the_monitor(
    services: dict[str, Any], monitor_env: dict[str, str]
) -> None:
    config = load_yaml(PROMETHEUS_YML)
    _, http_port = host_port(monitor_env["MONITOR_HTTP"])
    jobs = [
        job
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        if f"monitor:{http_port}" in group["targets"]
    ]
    assert jobs, f"no scrape target monitor:{http_port}"
    job = jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    interval = job.get("scrape_interval", config.get("global", {}).get("scrape_interval"))
    assert interval == "15s"
    assert "prometheus" in services and 9090 in container_ports(services["prometheus"])


# --- files mounted from the host -----------------------------------------------------


def compose_files() -> list[Path]:
    return [path for path in (COMPOSE, SCALE) if path.is_file()]


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: p.name)
def test_host_mounts_exist_and_named_volumes_are_declared(path: Path) -> None:
    data = load_yaml(path)
    declared = set((data.get("volumes") or {}).keys())
    if path != COMPOSE:
        declared |= set((load_yaml(COMPOSE).get("volumes") or {}).keys())
    for name, service in data["services"].items():
        for source, target in mounts(service):
            if is_host_path(source):
                # compose resolves relative paths against the first file's folder
                assert (ROOT / source).exists(), f"{name}: {source} -> {target} missing"
            elif source:
                assert source in declared, f"{name}: volume {source} not declared"


def test_configs_are_mounted_where_the_images_read_them(services: dict[str, Any]) -> None:
    expected = {
        "mosquitto": ("./deploy/mosquitto/mosquitto.conf", "/mosquitto/config/mosquitto.conf"),
        "prometheus": ("./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        "grafana": (
            "./deploy/grafana/provisioning/datasources",
            "/etc/grafana/provisioning/datasources",
        ),
    }
    for name, mount in expected.items():
        assert mount in mounts(services[name]), f"{name} does not mount {mount[0]}"
    assert (ROOT / expected["grafana"][0] / GRAFANA_DATASOURCES.name).is_file()


def test_monitor_is_built_from_this_repository(services: dict[str, Any]) -> None:
    build = services["monitor"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE
    assert services["monitor"]["image"] == "meter-state-monitor"


@pytest.mark.skipif(not SCALE.is_file(), reason="no deploy/compose.scale.yml")
def test_scale_workers_share_a_group_with_distinct_client_ids() -> None:
    workers = [
        environment(s)
        for s in load_yaml(SCALE)["services"].values()
        if "MONITOR_MQTT__SHARED_GROUP" in environment(s)
    ]
    assert len(workers) >= 2
    assert len({w["MONITOR_MQTT__SHARED_GROUP"] for w in workers}) == 1
    client_ids = [w["MONITOR_MQTT__CLIENT_ID"] for w in workers]
    assert len(set(client_ids)) == len(client_ids)


@pytest.mark.skipif(not SCALE.is_file(), reason="no deploy/compose.scale.yml")
def test_scale_workers_get_shared_subscriptions(services: dict[str, Any]) -> None:
    scale = load_yaml(SCALE)["services"]
    base = resolved_environment(services["monitor"])
    envs = {
        name: {**(base if name == "monitor" else {}), **resolved_environment(service)}
        for name, service in scale.items()
    }
    settings = {name: settings_for(env) for name, env in envs.items()}
    assert all(s.mqtt.subscription.startswith("$share/workers/") for s in settings.values())
    assert len({s.mqtt.session_id for s in settings.values()}) == len(settings)


@pytest.mark.skipif(not SCALE.is_file(), reason="no deploy/compose.scale.yml")
def test_scale_worker_matches_the_first_worker(services: dict[str, Any]) -> None:
    base = environment(services["monitor"])
    for name, service in load_yaml(SCALE)["services"].items():
        if name in services or "build" in service:
            continue
        assert service["image"] == services["monitor"]["image"]
        env = environment(service)
        # The client id is the one thing that must differ (it names the session).
        drift = {k for k, v in base.items() if env.get(k) != v} - {"MONITOR_MQTT__CLIENT_ID"}
        assert not drift, f"{name} differs from monitor in {drift}"


def test_every_worker_shares_the_state_database(services: dict[str, Any]) -> None:
    urls = {resolved_environment(services["monitor"])["MONITOR_STATE_URL"]}
    if SCALE.is_file():
        urls |= {
            resolved_environment(s)["MONITOR_STATE_URL"]
            for s in load_yaml(SCALE)["services"].values()
        }
    [url] = urls
    postgres = resolved_environment(services["postgres"])
    parts = urlsplit(url)
    assert parts.hostname == "postgres" and parts.path == f"/{postgres['POSTGRES_DB']}"
    assert (parts.username, parts.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )


# --- Dockerfile --------------------------------------------------------------------


def test_dockerfile_runs_monitor_run() -> None:
    cmds = [args for word, args in dockerfile_instructions() if word == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    assert command_words(cmds[-1]) == ["monitor", "run"]


def test_dockerfile_healthcheck_hits_healthz_on_the_api_port() -> None:
    checks = [args for word, args in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert checks, "Dockerfile has no HEALTHCHECK"
    _, _, command = checks[-1].partition("CMD")
    _, port = host_port(dockerfile_env()["MONITOR_HTTP"])
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(command_words(command))


def test_dockerfile_env_and_user() -> None:
    env = dockerfile_env()
    assert env["MONITOR_CONFIG"] == "/app/config"
    assert env["MONITOR_DATA_DIR"] == "/data"
    assert host_port(env["MONITOR_HTTP"]) == ("0.0.0.0", 8080)
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the service must not run as root"
    exposed = {int(p) for word, args in instructions if word == "EXPOSE" for p in args.split()}
    assert 8080 in exposed


def test_dockerfile_env_names_are_known_to_the_code(known_variables: set[str]) -> None:
    names = {k for k in dockerfile_env() if k.startswith("MONITOR_")}
    assert names <= known_variables, f"unknown: {names - known_variables}"


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = {ln.strip().strip("/") for ln in lines if ln.strip() and ln[0] != "#"}
    for needed in ("monitor", "pyproject.toml", "README.md", "config"):
        assert needed not in patterns, f".dockerignore drops {needed}"
    for dropped in (".venv", ".git", "data"):
        assert dropped in patterns, f".dockerignore should drop {dropped}"


# --- mosquitto.conf ------------------------------------------------------------------


def test_mosquitto_persists_and_allows_batched_acks() -> None:
    settings = dict(mosquitto_settings())
    assert settings["persistence"] == "true"
    assert settings["persistence_location"] == "/mosquitto/data/"
    assert int(settings["max_inflight_messages"]) > 20
    assert int(settings["max_queued_messages"]) >= 1000
    assert settings["log_dest"] == "stdout"


def test_mosquitto_data_is_a_volume(services: dict[str, Any]) -> None:
    settings = dict(mosquitto_settings())
    targets = {t.rstrip("/") for _, t in mounts(services["mosquitto"])}
    assert settings["persistence_location"].rstrip("/") in targets


# --- the helpers themselves -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "y"}, "y"),
        ("${A}", {}, ""),
        ("$A/b", {"A": "y"}, "y/b"),
        ("$$A", {"A": "y"}, "$A"),
        ("${A:-}", {}, ""),
        ("plain", {}, "plain"),
    ],
)
def test_resolve(raw: str, env: dict[str, str], expected: str) -> None:
    assert resolve(raw, env) == expected


KUBERNETES = ROOT / "deploy" / "kubernetes" / "monitor.yaml"


def test_the_kubernetes_workers_use_variables_the_code_reads(known_variables: set[str]) -> None:
    docs = list(yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8")))
    [sts] = [d for d in docs if d["kind"] == "StatefulSet"]
    [container] = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= known_variables, set(env) - known_variables
    # each worker's client id is its pod name: stable across restarts, distinct per worker
    client_id = env["MONITOR_MQTT__CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert client_id == "metadata.name"
    assert "MONITOR_STATE_URL" in env and "MONITOR_MQTT__SHARED_GROUP" in env
    # listening beyond loopback needs an access file: one mounted from a volume there
    access = Path(env["MONITOR_ACCESS_FILE"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert mounts.get(str(access.parent)) in volumes
    # a database outage must not restart a worker that still stores telemetry
    assert "tcpSocket" in container["livenessProbe"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    values = {n: e.get("value", "x") for n, e in env.items()}
    values["MONITOR_STATE_URL"] = "postgresql://m:p@db:5432/monitor"
    values["MONITOR_INFLUX_TOKEN"] = "t"
    settings = settings_for(values)
    assert settings.mqtt.shared_group == "workers" and settings.state.url


def test_mosquitto_takes_tls_logins_and_the_acl_only() -> None:
    settings = mosquitto_settings()
    keys = dict(settings)
    assert keys["allow_anonymous"] == "false"
    assert {"cafile", "certfile", "keyfile", "password_file", "acl_file"} <= set(keys)
    assert [v for k, v in settings if k == "listener"] == ["8883"], "no plain listener"
