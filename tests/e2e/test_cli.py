"""The `openhqm` command as a user meets it: clear one-line errors, config check, client commands."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import httpx
import typer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openhqm.cli import cli
from tests.harness import Sample, served, settings
from tests.integration.http_servers import serve
from tests.processes import SUBPROCESS_PYTHONPATH


def openhqm(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENHQM_") or k.startswith("OPENHQM_TEST")}
    return subprocess.run([sys.executable, "-m", "openhqm", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, "PYTHONPATH": SUBPROCESS_PYTHONPATH, **(env or {})}, cwd=cwd)


def test_a_taken_port_is_reported_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = openhqm("serve", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_server_engine_is_reported_in_one_line(tmp_path: Path) -> None:
    result = openhqm("serve", "--engine", "gunicorn", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "server.engine" in result.stderr and "'uvicorn' or 'granian'" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unwritable_data_dir_is_reported_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = openhqm("serve", "--data-dir", str(blocker / "data"))
    assert result.returncode == 2
    assert "data_dir" in result.stderr and "cannot be created" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_queue_type_suggests_the_nearest(tmp_path: Path) -> None:
    result = openhqm("serve", "--queue-type", "redsi", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "unknown queue type 'redsi'; did you mean 'redis'?" in result.stderr


def test_config_check_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("queue:\n  type: rabbitmq\n  rabbitmq:\n    url: amqp://app:${PW}@mq:5672/\n")
    result = openhqm("config", "check", "--config", str(config), env={"PW": "canary-pw-77"})
    assert result.returncode == 0, result.stderr
    assert "canary-pw-77" not in result.stdout
    assert "amqp://app:**********@mq:5672/" in result.stdout


def test_config_check_fails_naming_the_bad_key() -> None:
    result = openhqm("config", "check", env={"OPENHQM_WORKER__CONCURRENCY": "many"})
    assert result.returncode == 2
    assert "worker.concurrency" in result.stderr and "many" in result.stderr


def test_submit_status_and_dlq_commands_talk_to_a_running_listener(tmp_path: Path) -> None:
    # The commands are the processes under test; the listener they talk to runs in this one.
    with served(Sample().app, settings(tmp_path)) as url:
        env = {"OPENHQM_URL": url}
        waited = openhqm("submit", '{"n": 5}', "--wait", "10", env=env)
        assert waited.returncode == 0, waited.stderr
        result = json.loads(waited.stdout)
        assert result["status"] == "COMPLETED" and result["result"] == {"n": 5}
        queued = openhqm("submit", '{"n": 6}', env=env)
        cid = queued.stdout.strip()
        status = openhqm("status", cid, env=env)
        assert json.loads(status.stdout)["correlation_id"] == cid
        failed = openhqm("submit", "1", "--handler", "give_up", "--wait", "10", env=env)
        assert json.loads(failed.stdout)["status"] == "FAILED"
        listed = json.loads(openhqm("dlq", "list", env=env).stdout)
        assert any(entry["correlation_id"] == json.loads(failed.stdout)["correlation_id"] for entry in listed)
        assert json.loads(openhqm("dlq", "purge", "--yes", env=env).stdout)["purged"] >= 1
        bad = openhqm("submit", "{not json", env=env)
        assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_an_unreachable_broker_is_reported_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = openhqm("serve", "--queue-type", "redis", "--data-dir", str(tmp_path),
                     env={"OPENHQM_QUEUE__REDIS__URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 2
    assert f"cannot connect to the queue redis://127.0.0.1:{port}/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_prints_the_installed_version() -> None:
    result = openhqm("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"openhqm {version('openhqm')}"


def test_every_command_option_and_argument_has_help_text() -> None:
    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    for path, command in walk(typer.main.get_command(cli), "openhqm"):
        assert command.help, f"{path} has no help text"
        for param in command.params:
            assert getattr(param, "help", None), f"{path} {param.name} has no help text"


def sources_of(output: str) -> dict[str, tuple[str, str]]:
    rows = (re.split(r"\s{2,}", line.strip(), maxsplit=2) for line in output.splitlines())
    return {row[0]: (row[1], row[2]) for row in rows}


def test_config_check_sources_names_the_default_file_environment_and_flag_of_each_value(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 9100\nworker:\n  prefetch: 8\n"
                      "results:\n  redis:\n    url: redis://:canary-pw-5@cache:6379/0\n")
    result = openhqm("config", "check", "--sources", "--config", str(config), "--data-dir", str(tmp_path),
                     env={"OPENHQM_WORKER__CONCURRENCY": "7", "OPENHQM_WORKER__PREFETCH": "9"})
    assert result.returncode == 0, result.stderr
    sources = sources_of(result.stdout)
    assert sources["server.port"] == ("9100", f"YAML file {config}")
    assert sources["worker.concurrency"] == ("7", "environment variable OPENHQM_WORKER__CONCURRENCY")
    assert sources["worker.prefetch"] == ("9", "environment variable OPENHQM_WORKER__PREFETCH")
    assert sources["data_dir"] == (str(tmp_path), "flag --data-dir")
    assert sources["server.host"] == ("127.0.0.1", "default")
    assert sources["results.redis.url"][1] == f"YAML file {config}"
    assert "canary-pw-5" not in result.stdout


def test_config_check_connect_says_ok_for_a_reachable_queue_and_store(tmp_path: Path) -> None:
    result = openhqm("config", "check", "--connect", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^queue sqlite://\S+: OK$", result.stdout, re.MULTILINE)
    assert "result store sqlite: OK" in result.stdout


def test_config_check_connect_names_the_part_it_cannot_reach(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = openhqm("config", "check", "--connect", "--queue-type", "redis", "--data-dir", str(tmp_path),
                     env={"OPENHQM_QUEUE__REDIS__URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 1
    assert f"queue redis://127.0.0.1:{port}/0: failed:" in result.stdout
    assert "result store sqlite: OK" in result.stdout
    assert "Traceback" not in result.stderr


def test_cleanup_older_than_zero_removes_every_finished_request_and_keeps_waiting_ones(tmp_path: Path) -> None:
    with served(Sample().app, settings(tmp_path)) as url:
        done = httpx.post(url + "/api/v1/submit", json={"payload": 1}, headers={"Prefer": "wait=30"}).json()
        assert done["status"] == "COMPLETED"
        scheduled = httpx.post(url + "/api/v1/submit", json={"payload": 2, "metadata": {"delay_s": 300}}).json()
        result = openhqm("cleanup", "--older-than", "0", env={"OPENHQM_DATA_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "removed 1 finished request(s)"
        assert httpx.get(f"{url}/api/v1/status/{done['correlation_id']}").status_code == 404
        assert httpx.get(f"{url}/api/v1/status/{scheduled['correlation_id']}").json()["status"] == "SCHEDULED"


def on_a_terminal(*args: str, env: dict[str, str], stream: str = "stdout") -> tuple[int, str, str]:
    """Run `openhqm` with `stream` (stdout or stderr) on a pseudo-terminal: (exit code, what the
    terminal showed, the other stream)."""
    controller, terminal = pty.openpty()
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: terminal}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENHQM_")}
    process = subprocess.Popen([sys.executable, "-m", "openhqm", *args], stdin=subprocess.DEVNULL, **streams,
                               env={**clean, "PYTHONPATH": SUBPROCESS_PYTHONPATH, **env})
    os.close(terminal)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    stdout, stderr = process.communicate(timeout=60)
    other = stderr if stream == "stdout" else stdout
    return process.returncode, shown.decode(), other.decode()


def test_status_on_a_terminal_prints_aligned_key_value_lines(tmp_path: Path) -> None:
    with served(Sample().app, settings(tmp_path)) as url:
        done = httpx.post(url + "/api/v1/submit", json={"payload": 1}, headers={"Prefer": "wait=30"}).json()
        code, shown, _ = on_a_terminal("status", done["correlation_id"], env={"OPENHQM_URL": url})
    assert code == 0
    lines = [line for line in shown.splitlines() if line.strip()]
    shown_as = dict(line.split(None, 1) for line in lines)
    assert (shown_as["correlation_id"], shown_as["status"], shown_as["error"]) == (
        done["correlation_id"], "COMPLETED", "-")
    assert len({line.index(value) for line, value in zip(lines, shown_as.values(), strict=True)}) == 1  # aligned


def test_dlq_list_on_a_terminal_prints_a_table(tmp_path: Path) -> None:
    with served(Sample().app, settings(tmp_path)) as url:
        failed = httpx.post(url + "/api/v1/submit", json={"payload": 1, "metadata": {"handler": "give_up"}},
                            headers={"Prefer": "wait=30"}).json()
        code, shown, _ = on_a_terminal("dlq", "list", env={"OPENHQM_URL": url})
    assert code == 0
    header, row = shown.splitlines()[:2]
    assert header.split() == ["id", "correlation_id", "reason", "attempts", "dead_lettered_at", "last_error"]
    assert failed["correlation_id"] in row.split()


def progress_listener(answers: list[tuple[int, dict[str, Any]]]) -> Starlette:
    """A stand-in listener answering the response route with `answers` in turn, so the exact
    sequence of progress changes is known (tests/integration/test_progress_and_cancel.py has a real
    handler report it)."""
    remaining = iter(answers)

    async def response(request: Request) -> JSONResponse:
        status_code, body = next(remaining)
        return JSONResponse(body, status_code=status_code)

    return Starlette(routes=[Route("/api/v1/response/{correlation_id}", response)])


PROGRESSING = [
    (202, {"correlation_id": "r1", "status": "PROCESSING", "progress": {"fraction": 0.25, "message": "reading"}}),
    (202, {"correlation_id": "r1", "status": "PROCESSING", "progress": {"fraction": 0.25, "message": "reading"}}),
    (202, {"correlation_id": "r1", "status": "PROCESSING", "progress": {"fraction": 0.75, "message": "writing"}}),
    (200, {"correlation_id": "r1", "status": "COMPLETED", "result": 42}),
]


def test_wait_prints_each_progress_change_as_a_plain_line_when_not_on_a_terminal() -> None:
    with serve(progress_listener(PROGRESSING)) as url:
        result = openhqm("wait", "r1", env={"OPENHQM_URL": url})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["25% reading", "75% writing"]
    assert json.loads(result.stdout)["result"] == 42


def test_wait_draws_a_progress_bar_on_a_terminal() -> None:
    with serve(progress_listener(PROGRESSING)) as url:
        code, shown, stdout = on_a_terminal("wait", "r1", env={"OPENHQM_URL": url}, stream="stderr")
    assert code == 0
    assert f"\r[{'#' * 8}{'-' * 22}]  25% reading" in shown
    assert f"\r[{'#' * 22}{'-' * 8}]  75% writing" in shown
    assert json.loads(stdout)["status"] == "COMPLETED"
