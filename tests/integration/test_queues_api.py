"""Queue pause/resume, the queue overview and series, and worker heartbeats, in process
(tests/harness.py) on the embedded SQLite queue and store; and the `openhqm queues` commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from openhqm.cli import cli
from openhqm.constants import DEFAULT_REQUEST_QUEUE as QUEUE
from openhqm.http.auth import required_scope
from openhqm.worker.pool import WorkerPool
from tests.contract.store_targets import postgres as postgres_store
from tests.contract.store_targets import redis as redis_store
from tests.harness import InProcess, Sample, eventually, in_process, served, settings
from tests.leftovers import remove_queues, unique
from tests.services import require_service


def pool_of(hq: InProcess) -> WorkerPool:
    pool = hq.runtime.pool
    assert pool is not None and pool.pause is not None
    return pool


async def pause(hq: InProcess) -> dict[str, Any]:
    """Pause through the API, then until this process's workers have stopped taking messages."""
    response = await hq.client.post(f"/api/v1/queues/{QUEUE}/pause")
    assert response.status_code == 200, response.text
    pool = pool_of(hq)
    await eventually(lambda: pool.pause is not None and pool.pause.paused
                     and (pool._intake is None or pool._intake.done()))
    body: dict[str, Any] = response.json()
    return body


async def queue(hq: InProcess) -> dict[str, Any]:
    items = (await hq.client.get("/api/v1/queues")).json()
    assert [item["name"] for item in items] == [QUEUE]
    item: dict[str, Any] = items[0]
    return item


async def test_a_paused_queue_accepts_submits_runs_nothing_and_runs_all_once_resumed(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path)) as hq:
        assert (await pause(hq))["paused"] is True
        ids = [(await hq.accepted({"name": f"n{i}"}, handler="record"))["correlation_id"] for i in range(50)]
        item = await queue(hq)
        assert (item["paused"], item["pending"], item["processing"], item["depth"]) == (True, 50, 0, 50)
        assert item["backend"] == "sqlite" and item["not_reported"] == []
        assert item["oldest_pending_age_s"] is not None
        assert sample.runs == []
        resumed = await hq.client.post(f"/api/v1/queues/{QUEUE}/resume")
        assert resumed.json()["paused"] is False
        for correlation_id in ids:
            assert (await hq.result(correlation_id))["status"] == "COMPLETED"
        assert len(sample.runs) == 50
        item = await queue(hq)
        assert (item["paused"], item["pending"], item["depth"]) == (False, 0, 0)
        series = (await hq.client.get(f"/api/v1/queues/{QUEUE}/series", params={"minutes": 3})).json()
        assert len(series["minutes"]) == 3 and series["not_reported"] == []
        assert sum(minute["completed"] for minute in series["minutes"]) == 50
        assert all(minute["at"].endswith(":00.000Z") for minute in series["minutes"])
        assert any(minute["p99_ms"] is not None for minute in series["minutes"])


async def test_a_pause_lets_the_running_job_finish_and_hands_back_what_was_prefetched(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path, worker={"concurrency": 1, "prefetch": 8})) as hq:
        await pause(hq)  # so that the first fetch after the resume takes all six at once
        held = (await hq.accepted({"name": "held", "hold": True}, handler="record"))["correlation_id"]
        waiting = [(await hq.accepted({"name": f"w{i}"}, handler="record"))["correlation_id"] for i in range(5)]
        await hq.client.post(f"/api/v1/queues/{QUEUE}/resume")
        await sample.event("started", "held").wait()
        assert await hq.runtime.backend.depth(QUEUE) == 0  # the other five prefetched by the one slot
        await pause(hq)
        sample.event("release", "held").set()
        assert (await hq.result(held))["status"] == "COMPLETED"
        assert await hq.runtime.backend.depth(QUEUE) == 5  # handed back, not held by this worker
        assert [run.name for run in sample.runs] == ["held"]
        assert (await queue(hq))["pending"] == 5
        await hq.client.post(f"/api/v1/queues/{QUEUE}/resume")
        for correlation_id in waiting:
            assert (await hq.result(correlation_id))["status"] == "COMPLETED"


async def test_a_pause_survives_a_restart_and_is_read_before_the_workers_start(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path)) as hq:
        await pause(hq)
    async with in_process(sample.app, settings(tmp_path)) as hq:
        assert pool_of(hq).pause.paused  # type: ignore[union-attr]
        await hq.accepted({"name": "after-restart"}, handler="record")
        assert (await queue(hq))["paused"] is True
        assert await hq.runtime.backend.depth(QUEUE) == 1
        metrics = (await hq.client.get("/metrics")).text
        assert f'openhqm_queue_paused{{queue="{QUEUE}"}} 1.0' in metrics
        await hq.client.post(f"/api/v1/queues/{QUEUE}/resume")
        await eventually(lambda: len(sample.runs) == 1)


async def test_an_unknown_queue_is_a_404_problem_naming_the_known_ones(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path)) as hq:
        for path in ("/api/v1/queues/nope/pause", "/api/v1/queues/nope/resume"):
            response = await hq.client.post(path)
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")
            assert QUEUE in response.json()["detail"]
        assert (await hq.client.get("/api/v1/queues/nope/series")).status_code == 404
        too_many = await hq.client.get(f"/api/v1/queues/{QUEUE}/series", params={"minutes": 100_000})
        assert too_many.status_code == 422


async def test_this_process_heartbeat_is_listed_alive_and_removed_on_shutdown(tmp_path: Path) -> None:
    sample = Sample()
    config = settings(tmp_path, worker={"heartbeat_interval_s": 0.2, "concurrency": 3})
    async with in_process(sample.app, config) as hq:
        async def listed() -> list[dict[str, Any]]:
            workers: list[dict[str, Any]] = (await hq.client.get("/api/v1/workers")).json()
            return workers

        workers: list[dict[str, Any]] = []

        async def beating() -> bool:
            nonlocal workers
            workers = await listed()
            return bool(workers)

        await eventually_async(beating)
        [me] = workers
        assert (me["alive"], me["concurrency"], me["in_flight"], me["queue"]) == (True, 3, 0, QUEUE)
        assert set(me) >= {"worker_id", "host", "pid", "started_at", "last_seen_at"}
    async with in_process(sample.app, config, workers=False) as hq:
        assert (await hq.client.get("/api/v1/workers")).json() == []


async def eventually_async(condition: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.02)


def test_the_queues_commands_list_pause_and_resume(tmp_path: Path) -> None:
    runner = CliRunner()
    with served(Sample().app, settings(tmp_path)) as url:
        def openhqm(*args: str) -> Any:
            result = runner.invoke(cli, ["queues", *args, "--url", url, "--json"])
            assert result.exit_code == 0, result.output
            lines = result.output.splitlines()  # the served app logs into the same stdout
            start = next(i for i, line in enumerate(lines) if line.startswith(("[", "{")))
            return json.loads("\n".join(lines[start:]))

        assert [(q["name"], q["paused"]) for q in openhqm("list")] == [(QUEUE, False)]
        assert openhqm("pause", QUEUE)["paused"] is True
        assert openhqm("list")[0]["paused"] is True
        assert openhqm("resume", QUEUE)["paused"] is False
        assert runner.invoke(cli, ["queues", "pause", "nope", "--url", url]).exit_code == 1
        assert httpx.get(f"{url}/api/v1/workers").status_code == 200


def test_pause_and_resume_need_the_admin_scope_and_reading_needs_read() -> None:
    assert required_scope("POST", f"/api/v1/queues/{QUEUE}/pause") == "admin"
    assert required_scope("POST", f"/api/v1/queues/{QUEUE}/resume") == "admin"
    for path in ("/api/v1/queues", f"/api/v1/queues/{QUEUE}/series", "/api/v1/workers"):
        assert required_scope("GET", path) == "read"


async def test_a_figure_the_broker_cannot_report_is_null_and_named_not_a_zero(tmp_path: Path) -> None:
    """MQTT cannot count the messages a queue holds (backends/base.py Capabilities.depth)."""
    run = unique(8)
    names = [f"console-req-{run}", f"console-resp-{run}"]
    queue = {"type": "mqtt", "mqtt": {"url": require_service("mqtt")},
             "request_queue": names[0], "response_queue": names[1]}
    try:
        async with in_process(Sample().app, settings(tmp_path, queue=queue), workers=False) as hq:
            [item] = (await hq.client.get("/api/v1/queues")).json()
            assert (item["name"], item["backend"]) == (names[0], "mqtt")
            assert item["depth"] is None and item["not_reported"] == ["depth"]
            assert (item["pending"], item["paused"]) == (0, False)
    finally:
        await remove_queues("mqtt", names)


@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_a_pause_reaches_a_worker_of_another_runtime_through_a_shared_store(
        store: str, tmp_path: Path) -> None:
    """Two runtimes, as two replicas: a listener and a worker sharing only the Redis or PostgreSQL store
    (and the SQLite queue); the pause travels through the store's change feed."""
    module = {"redis": redis_store, "postgres": postgres_store}[store]
    section = getattr((await module.make_settings(tmp_path)).results, store)  # a prefix or table of its own
    options = {key: value.get_secret_value() if isinstance(value, SecretStr) else value for key, value in section}
    config = settings(tmp_path, results={"type": store, store: options})
    try:
        async with in_process(Sample().app, config, workers=False) as listener, \
                in_process(Sample().app, config) as worker:
            pool = pool_of(worker)
            assert (await listener.client.post(f"/api/v1/queues/{QUEUE}/pause")).json()["paused"] is True
            await eventually(lambda: pool.pause is not None and pool.pause.paused)
            assert (await listener.client.post(f"/api/v1/queues/{QUEUE}/resume")).json()["paused"] is False
            await eventually(lambda: pool.pause is not None and not pool.pause.paused)
    finally:
        await module.remove(config)


async def test_the_redis_store_reports_the_oldest_unfinished_age(tmp_path: Path) -> None:
    section = (await redis_store.make_settings(tmp_path)).results.redis  # a prefix of its own
    options = {key: value.get_secret_value() if isinstance(value, SecretStr) else value for key, value in section}
    config = settings(tmp_path, results={"type": "redis", "redis": options})
    try:
        async with in_process(Sample().app, config, workers=False) as hq:
            assert (await queue(hq))["oldest_pending_age_s"] is None  # nothing unfinished yet
            await hq.accepted({"name": "waiting"}, handler="record")
            item = await queue(hq)
            assert item["pending"] == 1 and item["not_reported"] == []
            assert item["oldest_pending_age_s"] is not None and item["oldest_pending_age_s"] >= 0
    finally:
        await redis_store.remove(config)


async def test_the_series_reads_only_unsettled_minutes_from_the_store_after_the_first_time(
        tmp_path: Path) -> None:
    """An open console asks every 2 s; the 14 past minutes of its 15 are read from the store once."""
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        store, asked = hq.runtime.store, []
        read = store.finished_series

        async def spy(since: float, until: float) -> Any:
            asked.append((until - since) / 60)
            return await read(since, until)

        store.finished_series = spy  # type: ignore[method-assign]  # a spy on the real store's reads
        first = (await hq.client.get(f"/api/v1/queues/{QUEUE}/series?minutes=15")).json()
        second = (await hq.client.get(f"/api/v1/queues/{QUEUE}/series?minutes=15")).json()
    assert asked[0] == 15 and asked[1] <= 2  # the current minute (and the last one, if not yet settled)
    assert len(first["minutes"]) == len(second["minutes"]) == 15
