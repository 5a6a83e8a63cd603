"""Two listener replicas and one worker process sharing one SQLite data_dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SAMPLE_ENV
from tests.processes import OpenHQMProcess


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[OpenHQMProcess, OpenHQMProcess]]:
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(tmp_path / "runs.log")}
    first = OpenHQMProcess("listener", tmp_path, env, log_name="listener-a").start()
    second = OpenHQMProcess("listener", tmp_path, env, log_name="listener-b").start()
    worker = OpenHQMProcess("worker", tmp_path, env).start()
    yield first, second
    for process in (worker, first, second):
        process.stop()


def test_prefer_wait_and_long_poll_succeed_on_either_replica(
    replicas: tuple[OpenHQMProcess, OpenHQMProcess],
) -> None:
    first, second = replicas
    for n in range(4):
        for submit_to, poll_on in ((first, second), (second, first)):
            inline = httpx.post(f"{submit_to.url}/api/v1/submit", json={"payload": {"n": n}},
                                headers={"Prefer": "wait=20"}, timeout=30)
            assert inline.status_code == 200 and inline.json()["result"] == {"n": n}
            queued = httpx.post(f"{submit_to.url}/api/v1/submit",
                                json={"payload": {"n": n, "sleep_s": 0.05}, "metadata": {"handler": "record"}})
            cid = queued.json()["correlation_id"]
            polled = httpx.get(f"{poll_on.url}/api/v1/response/{cid}", params={"wait": 20}, timeout=30)
            assert polled.status_code == 200
            assert polled.json()["status"] == "COMPLETED"


def test_processes_wake_each_other_without_waiting_for_a_poll(tmp_path: Path) -> None:
    # Polling every 30 s: if any hop (listener -> worker, worker -> a listener, one listener's store
    # write -> the other's waiter) had to wait for a poll, Prefer: wait=15 would answer 202.
    env = {**SAMPLE_ENV, "OPENHQM_QUEUE__SQLITE__POLL_INTERVAL_S": "30"}
    first = OpenHQMProcess("listener", tmp_path, env, log_name="listener-a").start()
    second = OpenHQMProcess("listener", tmp_path, env, log_name="listener-b").start()
    worker = OpenHQMProcess("worker", tmp_path, env).start()
    try:
        for n in range(5):
            for replica in (first, second):
                answer = httpx.post(f"{replica.url}/api/v1/submit", json={"payload": {"n": n}},
                                    headers={"Prefer": "wait=15"}, timeout=30)
                assert answer.status_code == 200, answer.text
                assert answer.json()["result"] == {"n": n}
    finally:
        for process in (worker, first, second):
            process.stop()
