"""Settings precedence, typo detection and secret redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from openhqm.config import load_settings, redacted
from openhqm.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OPENHQM_") and not name.startswith("OPENHQM_TEST"):
            monkeypatch.delenv(name)


def test_defaults_run_on_the_embedded_sqlite_queue() -> None:
    settings = load_settings()
    assert settings.queue.type == "sqlite" and settings.results.type == "sqlite"
    assert settings.server.port == 8000 and settings.server.max_body_bytes == 10 * 1024 * 1024
    assert settings.server.max_wait_s == 60 and settings.data_dir == Path("./openhqm-data")


def test_yaml_then_environment_then_flags_take_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 9001\n  host: 0.0.0.0\nworker:\n  concurrency: 3\n")
    monkeypatch.setenv("OPENHQM_SERVER__PORT", "9002")
    settings = load_settings(config)
    assert settings.server.port == 9002 and settings.server.host == "0.0.0.0"
    assert settings.worker.concurrency == 3
    assert load_settings(config, {"server": {"port": 9003}}).server.port == 9003


def test_config_file_can_come_from_openhqm_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("queue:\n  type: memory\n")
    monkeypatch.setenv("OPENHQM_CONFIG", str(config))
    assert load_settings().queue.type == "memory"


def test_yaml_substitutes_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("queue:\n  redis:\n    url: redis://:${REDIS_PW}@h:6379/0\nserver:\n  host: ${HOST:-1.2.3.4}\n")
    monkeypatch.setenv("REDIS_PW", "s3cret")
    settings = load_settings(config)
    assert settings.queue.redis.url.get_secret_value() == "redis://:s3cret@h:6379/0"
    assert settings.server.host == "1.2.3.4"
    monkeypatch.delenv("REDIS_PW")
    with pytest.raises(ConfigError, match="REDIS_PW"):
        load_settings(config)


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'server\.prot'"):
        load_settings(config)


def test_environment_typo_with_double_underscore_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENHQM_SERVER__PROT", "1")
    with pytest.raises(ConfigError, match=r"OPENHQM_SERVER__PROT.*did you mean OPENHQM_SERVER__PORT"):
        load_settings()


def test_kubernetes_service_variables_without_double_underscore_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENHQM_PORT", "tcp://10.0.0.1:8000")
    monkeypatch.setenv("OPENHQM_SERVICE_HOST", "10.0.0.1")
    assert load_settings().server.port == 8000


def test_bad_value_names_the_key_the_value_and_the_expectation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENHQM_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "server.port" in message and "eighty" in message and "integer" in message


def test_redacted_config_masks_secrets_and_url_passwords() -> None:
    settings = load_settings(overrides={"queue": {"rabbitmq": {"url": "amqp://u:canary-pw@h/"}}})
    shown = str(redacted(settings))
    assert "canary-pw" not in shown
    assert "amqp://u:**********@h/" in shown


def test_retention_covers_every_finished_state_once() -> None:
    settings = load_settings(overrides={"results": {"ttl_s": 60, "ttl_by_status": {"FAILED": 3600}}})
    assert sorted(settings.results.retention()) == [(60, ["COMPLETED", "CANCELLED", "EXPIRED"]), (3600, ["FAILED"])]
    assert settings.results.longest_ttl_s == 3600
    with pytest.raises(ConfigError, match="ttl_by_status"):
        load_settings(overrides={"results": {"ttl_by_status": {"PENDING": 1}}})


def test_proxy_mode_runs_enough_forwards_at_once_unless_concurrency_is_set() -> None:
    proxy = {"enabled": True, "default_endpoint": "http://127.0.0.1:9/"}
    assert load_settings().worker.concurrency == 16
    assert load_settings(overrides={"proxy": proxy}).worker.concurrency == 100
    assert load_settings(overrides={"proxy": proxy, "worker": {"concurrency": 16}}).worker.concurrency == 16
