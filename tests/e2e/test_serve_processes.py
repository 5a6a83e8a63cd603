"""`openhqm serve --processes 2`: two serving processes on one port, supervised, on one SQLite data_dir."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SAMPLE_ENV
from tests.e2e.test_durability import run_counts, submit_many, wait_all_terminal
from tests.processes import SUBPROCESS_PYTHONPATH, OpenHQMProcess
from tests.waiting import wait_until

TWO = {**SAMPLE_ENV, "OPENHQM_SERVER__PROCESSES": "2"}
needs_granian = pytest.mark.skipif(importlib.util.find_spec("granian") is None,
                                   reason="the granian extra is not installed")


def started_pids(log: str) -> list[int]:
    """The serving processes' pids, in the order the supervisor started them."""
    return [json.loads(line)["pid"] for line in log.splitlines()
            if line.startswith("{") and '"serving process started"' in line]


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name}{labels} not in /metrics"
    return float(found.group(1))


def worker_pid(worker_id: str) -> int:
    return int(worker_id.split("-")[-2])  # host-pid-random (worker/identity.py)


@pytest.fixture(params=["uvicorn", pytest.param("granian", marks=needs_granian)])
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OpenHQMProcess]:
    """`serve --processes 2` on each server engine."""
    server = OpenHQMProcess("serve", tmp_path, {**TWO, "OPENHQM_TEST_RUN_LOG": str(tmp_path / "runs.log"),
                                                "OPENHQM_SERVER__ENGINE": request.param}).start()
    yield server
    server.stop()


async def test_both_processes_answer_prefer_wait_and_run_requests(served: OpenHQMProcess) -> None:
    children = started_pids(served.log())
    assert len(children) == 2
    workers = httpx.get(f"{served.url}/api/v1/workers").json()
    assert {worker["pid"] for worker in workers} == set(children), "each process runs a worker pool"

    async def round_trip(n: int) -> str:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:  # a connection of its own
            answer = await http.post("/api/v1/submit", headers={"Prefer": "wait=20"}, json={
                "payload": {"n": n, "sleep_s": 0.1}, "metadata": {"handler": "record"}})
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == {"n": n, "sleep_s": 0.1}
            cid: str = answer.json()["correlation_id"]
            detail = (await http.get(f"/api/v1/requests/{cid}")).json()
            return str(detail["attempt_history"][-1]["worker_id"])

    # Which process runs a request is the kernel's pick of connection and, with eager dispatch, the
    # receiving process's free slot: on a loaded machine one round of 40 once all ran on one process.
    ran: set[int] = set()
    for round_ in range(5):
        ran_on = await asyncio.gather(*(round_trip(40 * round_ + n) for n in range(40)))
        ran |= {worker_pid(worker_id) for worker_id in ran_on}
        if ran == set(children):
            break
    assert ran == set(children), "both processes ran requests"


def test_metrics_add_up_every_process(served: OpenHQMProcess) -> None:
    for n in range(30):
        with httpx.Client(base_url=served.url, timeout=30) as http:  # new connections: both processes get some
            assert http.post("/api/v1/submit", json={"payload": {"n": n}},
                             headers={"Prefer": "wait=20"}).status_code == 200
    text = httpx.get(f"{served.url}/metrics").text
    assert metric(text, "openhqm_submitted_total", '{queue="openhqm-requests"}') == 30
    assert metric(text, "openhqm_http_requests_total", '{method="POST",route="/api/v1/submit",status="200"}') == 30
    assert metric(text, "openhqm_messages_total",
                  '{endpoint="",handler="echo",outcome="completed",queue="openhqm-requests"}') == 30
    concurrency = sum(worker["concurrency"] for worker in httpx.get(f"{served.url}/api/v1/workers").json())
    assert metric(text, "openhqm_worker_concurrency") == concurrency, "the pools' sizes are summed"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["uvicorn", pytest.param("granian", marks=needs_granian)])
async def test_sigterm_during_load_loses_no_accepted_request(tmp_path: Path, engine: str) -> None:
    env = {**TWO, "OPENHQM_TEST_RUN_LOG": str(tmp_path / "runs.log"), "OPENHQM_WORKER__CONCURRENCY": "4",
           "OPENHQM_WORKER__SHUTDOWN_TIMEOUT_S": "20", "OPENHQM_SERVER__ENGINE": engine}
    server = OpenHQMProcess("serve", tmp_path, env).start()
    try:
        half = asyncio.Event()
        submitting = asyncio.create_task(submit_many(server.url, 600, {"sleep_s": 0.02}, stop_after=200,
                                                     on_accepted=half))
        await half.wait()
        server.signal(signal.SIGTERM)  # mid-submission and mid-processing
        accepted = await submitting
        print(f"accepted={len(accepted)} of 600")
        assert server.wait_exit(90) == 0, server.log()
        log = server.log()
        ended = "Finished server process" if engine == "uvicorn" else '"server stopped"'
        assert log.count(ended) == 2, "each process drained and ended"
        assert "returned unfinished jobs" not in log, "in-flight jobs finished within the timeout"
        server = OpenHQMProcess("serve", tmp_path, env, log_name="restart").start()
        statuses = await wait_all_terminal(server.url, accepted)
        assert collections.Counter(statuses.values()) == {"COMPLETED": len(accepted)}
        runs = run_counts(tmp_path)
        assert set(accepted) <= set(runs), "every accepted request ran"
        assert max(runs.values()) == 1, "a drain runs nothing twice"
    finally:
        server.stop()


async def test_a_killed_process_is_started_again(served: OpenHQMProcess) -> None:
    first, second = started_pids(served.log())
    os.kill(second, signal.SIGKILL)
    await wait_until(lambda: "serving process restarted" in served.log(), timeout_s=30,
                     what="the killed process's slot serving again")
    assert '"exit_code":-9' in served.log()
    children = started_pids(served.log())
    assert len(children) == 3 and children[0] == first and second not in children[2:]
    for n in range(10):
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:  # new connections: either process
            answer = await http.post("/api/v1/submit", json={"payload": {"n": n}}, headers={"Prefer": "wait=20"})
            assert answer.json()["result"] == {"n": n}
    assert served.proc is not None and served.proc.poll() is None, "the supervisor kept running"


def test_a_process_that_cannot_start_stops_the_supervisor_with_its_code(tmp_path: Path) -> None:
    # The supervisor builds the app once to check the settings; its serving processes then fail to.
    (tmp_path / "refusing_app.py").write_text(
        "import sys\nfrom openhqm import OpenHQM\n\n"
        "if sys.argv[0].endswith('serve_process.py'):\n    raise SystemExit(3)\napp = OpenHQM()\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENHQM_") or k.startswith("OPENHQM_TEST")}
    done = subprocess.run([sys.executable, "-m", "openhqm", "serve", "--processes", "2", "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**clean, "PYTHONPATH": SUBPROCESS_PYTHONPATH, "OPENHQM_DATA_DIR": str(tmp_path),
                               "OPENHQM_WORKER__APP": "refusing_app:app", "OPENHQM_LOGGING__FORMAT": "json"})
    assert done.returncode == 3, done.stderr
    assert "serving process could not start" in done.stderr
    for pid in started_pids(done.stderr):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # none is left behind


def test_memory_result_store_is_refused_with_more_than_one_process(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENHQM_") or k.startswith("OPENHQM_TEST")}
    done = subprocess.run([sys.executable, "-m", "openhqm", "serve", "--processes", "2"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={**clean, "PYTHONPATH": SUBPROCESS_PYTHONPATH, "OPENHQM_RESULTS__TYPE": "memory"})
    assert done.returncode == 2
    assert "setting 'server.processes' (got 2): with results.type memory each process" in done.stderr
    assert "Traceback" not in done.stderr
