"""Settings: defaults, file, environment overrides, refusal with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.core.yamlfile import ConfigError
from monitor.platform.config import ENV_ALIASES, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_embedded_by_default() -> None:
    s = load_settings(REPO / "config", {})
    assert s.mqtt.url is None
    assert s.storage.backend == "embedded"
    assert s.mqtt.subscription == "meters/#"


def test_contract_variables_override_the_file() -> None:
    env = {
        "MONITOR_MQTT_URL": "mqtt://user:pw@broker:1884",
        "MONITOR_STORE": "influxdb",
        "MONITOR_INFLUX_URL": "http://influx:8086/",
        "MONITOR_INFLUX_TOKEN": "t",
        "MONITOR_INFLUX_ORG": "o",
        "MONITOR_INFLUX_BUCKET": "b",
        "MONITOR_HTTP": "0.0.0.0:9000",
        "MONITOR_DATA_DIR": "/tmp/x",
        "MONITOR_EMBEDDED_MQTT": "0.0.0.0:1999",
        "MONITOR_ACCESS_FILE": "/etc/monitor/access.yaml",
    }
    s = load_settings(REPO / "config", env)
    assert s.mqtt.url == "mqtt://user:pw@broker:1884"
    assert s.storage.backend == "influxdb"
    assert s.storage.influx.url == "http://influx:8086"
    assert (s.storage.influx.token, s.storage.influx.org, s.storage.influx.bucket) == (
        "t",
        "o",
        "b",
    )
    assert s.api.http == "0.0.0.0:9000"
    assert s.storage.data_dir == Path("/tmp/x")
    assert s.mqtt.embedded == "0.0.0.0:1999"
    assert s.access_file == Path("/etc/monitor/access.yaml")
    assert set(env) == set(ENV_ALIASES)


def test_generic_variables_reach_any_key() -> None:
    s = load_settings(
        REPO / "config", {"MONITOR_MQTT__SHARED_GROUP": "workers", "MONITOR_MQTT__BATCH_MAX": "250"}
    )
    assert s.mqtt.batch_max == 250
    assert s.mqtt.subscription == "$share/workers/meters/#"


def test_bad_file_value_names_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "monitor.yaml").write_text("mqtt:\n  topic_root: meters\n  batch_max: -3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, {})
    text = str(err.value)
    assert f"{tmp_path / 'monitor.yaml'}:3: mqtt.batch_max" in text
    assert "greater than or equal to 1" in text


def test_bad_environment_value_blames_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, {"MONITOR_HTTP": "nonsense"})
    assert "environment MONITOR_HTTP: api.http" in str(err.value)


def test_unknown_key_and_bad_url_are_refused(tmp_path: Path) -> None:
    (tmp_path / "monitor.yaml").write_text("mqtt:\n  urll: x\n")
    with pytest.raises(ConfigError, match="urll"):
        load_settings(tmp_path, {})
    with pytest.raises(ConfigError, match="scheme"):
        load_settings(tmp_path / "none", {"MONITOR_MQTT_URL": "http://x:1"})


def test_time_zone_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_settings(tmp_path, {"MONITOR_SCHEDULING__TIMEZONE": "Mars/Olympus"})
    zone = load_settings(tmp_path, {"MONITOR_SCHEDULING__TIMEZONE": "Europe/Berlin"})
    assert str(zone.scheduling.zone) == "Europe/Berlin"


def test_influx_backend_needs_a_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MONITOR_INFLUX_URL"):
        load_settings(tmp_path, {"MONITOR_STORE": "influxdb"})


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    (tmp_path / "monitor.yaml").write_text("mqtt:\n  url: [\n")
    with pytest.raises(ConfigError, match=r"monitor.yaml:\d+"):
        load_settings(tmp_path, {})
