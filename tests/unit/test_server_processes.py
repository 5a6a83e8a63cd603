"""`server.processes` / `--processes`: what is accepted, what is refused and why."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from openhqm.cli import cli
from openhqm.config import load_settings
from openhqm.errors import ConfigError


def test_one_process_is_the_default() -> None:
    assert load_settings().server.processes == 1


def test_the_environment_sets_the_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENHQM_SERVER__PROCESSES", "3")
    assert load_settings().server.processes == 3


def test_fewer_than_one_process_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"setting 'server.processes' \(got 0\): Input should be greater than"):
        load_settings(None, {"server": {"processes": 0}})


@pytest.mark.parametrize("part", ["results", "queue"])
def test_a_memory_queue_or_store_is_refused_with_more_than_one_process(part: str) -> None:
    with pytest.raises(ConfigError, match=rf"setting 'server.processes' \(got 2\): with {part}.type memory each "
                                          "process would keep its own requests, unseen by the others"):
        load_settings(None, {"server": {"processes": 2}, part: {"type": "memory"}})


def test_a_memory_store_is_fine_in_one_process() -> None:
    assert load_settings(None, {"results": {"type": "memory"}}).results.type == "memory"


@pytest.mark.parametrize("kinds", [("sqlite", "sqlite"), ("redis", "redis"), ("rabbitmq", "postgres")])
def test_shared_queues_and_stores_take_any_number_of_processes(kinds: tuple[str, str]) -> None:
    queue, results = kinds
    settings = load_settings(None, {"server": {"processes": 4}, "queue": {"type": queue}, "results": {"type": results}})
    assert settings.server.processes == 4


def test_the_serve_option_is_checked_before_anything_starts() -> None:
    result = CliRunner().invoke(cli, ["serve", "--processes", "0"])
    assert result.exit_code == 2
    assert "setting 'server.processes' (got 0)" in result.output
