"""A running request cancelled at a listener process stops in a separate worker process: the cancel
travels only through the shared SQLite store (its change feed and bell), and so does progress."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.conftest import SAMPLE_ENV
from tests.harness import wait_until
from tests.processes import OpenHQMProcess


def test_cancel_at_a_listener_interrupts_the_job_in_a_worker_process(tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(runs)}
    listener = OpenHQMProcess("listener", tmp_path, env).start()
    worker = OpenHQMProcess("worker", tmp_path, env).start()
    try:
        cid = httpx.post(f"{listener.url}/api/v1/submit",
                         json={"payload": {}, "metadata": {"handler": "until_cancelled"}}).json()["correlation_id"]

        def status() -> dict[str, object]:
            body: dict[str, object] = httpx.get(f"{listener.url}/api/v1/status/{cid}").json()
            return body

        wait_until(lambda: status().get("progress"), timeout_s=30)
        progress = status()["progress"]
        assert isinstance(progress, dict)
        assert (progress["fraction"], progress["message"]) == (0.5, "waiting to be cancelled")
        cancelled = httpx.delete(f"{listener.url}/api/v1/requests/{cid}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
        wait_until(lambda: runs.exists() and f"interrupted {cid}" in runs.read_text(), timeout_s=30)
        final = httpx.get(f"{listener.url}/api/v1/response/{cid}").json()
        assert (final["status"], final["result"]) == ("CANCELLED", None)
    finally:
        for process in (worker, listener):
            process.stop()
