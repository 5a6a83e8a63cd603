"""A request handed to a worker in memory (eager dispatch) is as durable as one that went through the
queue: `openhqm serve` killed with SIGKILL while it runs, the next process runs it after its lease."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SAMPLE_ENV
from tests.processes import OpenHQMProcess

QUEUE = "openhqm-requests"


def deliveries(metrics: str, via: str) -> float:
    line = f'openhqm_worker_deliveries_total{{queue="{QUEUE}",via="{via}"}} '
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0


def logged(log: Path, line: str) -> bool:
    return log.exists() and line in log.read_text().splitlines()


async def until_logged(log: Path, line: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not logged(log, line):
        assert time.monotonic() < deadline, f"{line!r} not logged in time"
        await asyncio.sleep(0.05)  # another process writes the file: nothing to wait on instead


@pytest.mark.slow
async def test_serve_killed_during_an_eagerly_dispatched_request_runs_it_again_after_the_lease(
    tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(runs), "OPENHQM_QUEUE__SQLITE__LEASE_S": "1"}
    server = OpenHQMProcess("serve", tmp_path, env).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            response = await http.post("/api/v1/submit", json={"payload": {},
                                                               "metadata": {"handler": "stall_first_attempt"}})
            assert response.status_code == 202, response.text
            cid = response.json()["correlation_id"]
            await until_logged(runs, f"started {cid}")
            metrics = (await http.get("/metrics")).text
            assert (deliveries(metrics, "eager"), deliveries(metrics, "consume")) == (1, 0)
        server.kill9()
        server = OpenHQMProcess("serve", tmp_path, env, log_name="restart").start()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            done = (await http.get(f"/api/v1/response/{cid}", params={"wait": 30})).json()
            assert (done["status"], done["attempts"], done["result"]) == ("COMPLETED", 2, {"attempt": 2})
            metrics = (await http.get("/metrics")).text
            assert deliveries(metrics, "consume") == 1, "redelivered through the queue once its lease ran out"
        assert runs.read_text().split().count(cid) == 2
    finally:
        server.stop()
