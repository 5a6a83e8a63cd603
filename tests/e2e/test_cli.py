"""The `openhqm` command as a user meets it: clear one-line errors, config check, client commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness import Sample, served, settings
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
