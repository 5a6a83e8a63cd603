"""A pause set at a listener process stops a separate `openhqm worker` process on the same SQLite
data dir (only the store carries it), survives that worker's restart, and the worker's heartbeat
shows it alive, then gone once it is killed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from openhqm.constants import DEFAULT_REQUEST_QUEUE as QUEUE
from tests.e2e.conftest import SAMPLE_ENV
from tests.harness import wait_until
from tests.processes import OpenHQMProcess


def logged(process: OpenHQMProcess, event: str) -> int:
    """How many of the process's JSON log lines carry `event`."""
    count = 0
    for line in process.log().splitlines():
        try:
            count += json.loads(line).get("event") == event
        except (json.JSONDecodeError, AttributeError):
            continue
    return count


def test_a_pause_at_the_listener_stops_a_worker_process_and_survives_its_restart(tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(runs), "OPENHQM_WORKER__HEARTBEAT_INTERVAL_S": "0.3"}
    listener = OpenHQMProcess("listener", tmp_path, env).start()
    worker = OpenHQMProcess("worker", tmp_path, env).start()
    restarted: OpenHQMProcess | None = None
    api = httpx.Client(base_url=listener.url, timeout=30)
    try:
        def workers() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = api.get("/api/v1/workers").json()
            return listed

        def queue() -> dict[str, Any]:
            [item] = api.get("/api/v1/queues").json()
            assert isinstance(item, dict)
            return item

        def alive(process: OpenHQMProcess) -> list[bool]:
            assert process.proc is not None
            return [w["alive"] for w in workers() if w["pid"] == process.proc.pid]

        wait_until(lambda: alive(worker) == [True], timeout_s=30)
        assert api.post(f"/api/v1/queues/{QUEUE}/pause").json()["paused"] is True
        wait_until(lambda: logged(worker, "queue paused: taking no new messages") == 1, timeout_s=10)
        ids = [api.post("/api/v1/submit", json={"payload": {"n": i}, "metadata": {"handler": "record"}}
                        ).json()["correlation_id"] for i in range(5)]

        worker.signal(15)  # a clean stop removes its heartbeat
        assert worker.wait_exit(30) == 0
        wait_until(lambda: alive(worker) == [], timeout_s=10)
        restarted = OpenHQMProcess("worker", tmp_path, env, log_name="worker-restarted").start()
        wait_until(lambda: alive(restarted) == [True], timeout_s=30)
        # Read at start, before its pool takes anything: nothing ran, all five still wait.
        assert logged(restarted, "queue paused: taking no new messages") == 1
        item = queue()
        assert (item["paused"], item["pending"], item["depth"]) == (True, 5, 5)
        assert not runs.exists()

        assert api.post(f"/api/v1/queues/{QUEUE}/resume").json()["paused"] is False
        for cid in ids:
            assert api.get(f"/api/v1/response/{cid}", params={"wait": 30}).json()["status"] == "COMPLETED"
        assert sorted(runs.read_text().split()) == sorted(ids)

        restarted.kill9()
        wait_until(lambda: alive(restarted) == [False], timeout_s=10)  # silent for three intervals: gone
    finally:
        api.close()
        for process in (restarted, worker, listener):
            if process is not None:
                process.stop()
