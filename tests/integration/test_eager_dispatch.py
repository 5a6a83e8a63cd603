"""Eager dispatch on the embedded SQLite queue, in process (tests/harness.py): a submit that finds a free
worker slot writes its message already leased and hands it to the pool in memory; otherwise, and for
whatever it would overtake, the request takes the queue. Which path a request took is read from the
pool's counter `openhqm_worker_deliveries_total{via=eager|consume}`, never from timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from openhqm import metrics
from openhqm.backends.sqlite import SQLiteBackend
from openhqm.config import Settings
from openhqm.constants import DEFAULT_REQUEST_QUEUE as QUEUE
from openhqm.listener.enqueue import OneTransaction, SeparateWrites
from openhqm.worker.pool import WorkerPool
from tests.harness import InProcess, Sample, eventually, in_process, settings


def taken(via: str) -> float:
    return metrics.REGISTRY.get_sample_value("openhqm_worker_deliveries_total", {"queue": QUEUE, "via": via}) or 0.0


class Paths:
    """How many deliveries took each path since it was made."""

    def __init__(self) -> None:
        self.start = taken("eager"), taken("consume")

    @property
    def eager(self) -> float:
        return taken("eager") - self.start[0]

    @property
    def consumed(self) -> float:
        return taken("consume") - self.start[1]


@pytest.fixture
def sample() -> Sample:
    return Sample()


def pool_of(hq: InProcess) -> WorkerPool:
    pool = hq.runtime.pool
    assert pool is not None
    return pool


@asynccontextmanager
async def running(sample: Sample, config: Settings) -> AsyncIterator[InProcess]:
    async with in_process(sample.app, config) as hq:
        pool = pool_of(hq)
        await eventually(lambda: pool.taking)  # the intake starts on the loop's next turns
        yield hq


@pytest.fixture
async def two_slots(sample: Sample, tmp_path: Path) -> AsyncIterator[InProcess]:
    """Two slots: the intake waits for a message holding one, so one is free for eager dispatch."""
    async with running(sample, settings(tmp_path, worker={"concurrency": 2, "prefetch": 1})) as hq:
        yield hq


async def held(hq: InProcess, sample: Sample, name: str, **metadata: Any) -> str:
    """Submit a request that runs until the test releases it; returns once it runs."""
    body = await hq.accepted({"name": name, "hold": True}, handler="trace", **metadata)
    await asyncio.wait_for(sample.event("started", name).wait(), 10)
    return str(body["correlation_id"])


async def test_a_request_submitted_while_a_slot_is_free_runs_without_being_consumed(
    sample: Sample, tmp_path: Path
) -> None:
    async with running(sample, settings(tmp_path)) as hq:
        paths = Paths()
        response = await hq.submit({"name": "eager"}, handler="trace", headers={"Prefer": "wait=10"})
        assert response.status_code == 200 and response.json()["status"] == "COMPLETED"
        assert (paths.eager, paths.consumed) == (1, 0)
        assert response.json()["attempts"] == 1
        backend = hq.runtime.backend
        await eventually(lambda: pool_of(hq).in_flight == 0)
        assert await backend.depth(QUEUE) == 0  # acked: nothing left behind in the queue


async def test_the_record_is_written_claimed_with_the_message_where_queue_and_store_share_the_file(
    sample: Sample, tmp_path: Path
) -> None:
    async with running(sample, settings(tmp_path)) as hq:
        bridge = hq.runtime.bridge
        assert bridge is not None and isinstance(bridge.intake.writes, OneTransaction)
        seen: list[str] = []
        hq.runtime.store.add_listener(lambda record: seen.append(str(record.status)))
        cid = await held(hq, sample, "claimed")
        record = await hq.runtime.store.get(cid)
        assert record is not None and (record.status, record.attempts) == ("PROCESSING", 1)
        assert seen == ["PENDING", "PROCESSING"]  # both steps reach hooks and watchers, as with a claim
        sample.event("release", "claimed").set()
        assert (await hq.result(cid))["status"] == "COMPLETED"


async def test_with_a_store_of_its_own_the_eager_request_is_claimed_by_its_job(sample: Sample, tmp_path: Path) -> None:
    async with running(sample, settings(tmp_path, results={"type": "memory"})) as hq:
        bridge = hq.runtime.bridge
        assert bridge is not None and isinstance(bridge.intake.writes, SeparateWrites)
        paths = Paths()
        response = await hq.submit({"name": "separate"}, handler="trace", headers={"Prefer": "wait=10"})
        assert response.json()["status"] == "COMPLETED"
        assert (paths.eager, paths.consumed) == (1, 0)


async def test_with_no_free_slot_requests_take_the_queue_and_run_by_priority(
    two_slots: InProcess, sample: Sample
) -> None:
    paths = Paths()
    first = await held(two_slots, sample, "first")  # eager: the slot the intake does not hold
    second = await held(two_slots, sample, "second")  # no free slot: the intake consumes it
    assert (paths.eager, paths.consumed) == (1, 1)
    ids = [(await two_slots.accepted({"name": name}, handler="trace", priority=name))["correlation_id"]
           for name in ("LOW", "NORMAL", "URGENT")]
    sample.event("release", "second").set()  # its slot goes to the intake; "first" keeps the other
    for cid in [second, *ids]:
        assert (await two_slots.result(cid))["status"] == "COMPLETED"
    assert [run.name for run in sample.runs] == ["second", "URGENT", "NORMAL", "LOW"]
    sample.event("release", "first").set()
    assert (await two_slots.result(first))["status"] == "COMPLETED"
    assert (paths.eager, paths.consumed) == (1, 4)


async def test_a_session_request_waits_in_the_queue_behind_its_sessions_running_request(
    sample: Sample, tmp_path: Path
) -> None:
    config = settings(tmp_path, worker={"concurrency": 4}, ordering="session")
    async with running(sample, config) as hq:
        paths = Paths()
        first = await held(hq, sample, "first", session_id="s1")
        later = await hq.accepted({"name": "later"}, handler="trace", session_id="s1")
        other = await hq.accepted({"name": "other"}, handler="trace", session_id="s2")
        assert (await hq.result(other["correlation_id"]))["status"] == "COMPLETED"
        assert (paths.eager, paths.consumed) == (2, 0)  # first and other; later waits for first
        sample.event("release", "first").set()
        assert (await hq.result(later["correlation_id"]))["status"] == "COMPLETED"
        assert (await hq.result(first))["status"] == "COMPLETED"
        assert (paths.eager, paths.consumed) == (2, 1)
        runs = {run.name: run for run in sample.runs}
        assert runs["later"].start >= runs["first"].end


async def test_a_paused_queue_takes_no_eager_dispatch_and_a_scheduled_request_takes_the_queue(
    sample: Sample, tmp_path: Path
) -> None:
    async with running(sample, settings(tmp_path)) as hq:
        paths = Paths()
        assert (await hq.client.post(f"/api/v1/queues/{QUEUE}/pause")).status_code == 200
        pool = pool_of(hq)
        await eventually(lambda: not pool.taking)
        waiting = await hq.accepted({"name": "while-paused"}, handler="trace")
        scheduled_at = time.time()
        scheduled = await hq.accepted({"name": "scheduled"}, handler="trace", delay_s=0.2)
        assert sample.runs == [] and paths.eager == 0
        assert (await hq.client.post(f"/api/v1/queues/{QUEUE}/resume")).status_code == 200
        for body in (waiting, scheduled):
            assert (await hq.result(body["correlation_id"]))["status"] == "COMPLETED"
        assert (paths.eager, paths.consumed) == (0, 2)
        assert {run.name: run for run in sample.runs}["scheduled"].start >= scheduled_at + 0.2


async def test_an_eagerly_dispatched_job_still_running_at_shutdown_goes_back_to_the_queue(
    sample: Sample, tmp_path: Path
) -> None:
    config = settings(tmp_path, worker={"shutdown_timeout_s": 0.1})
    async with running(sample, config) as hq:
        paths = Paths()
        cid = await held(hq, sample, "unfinished")
        assert paths.eager == 1
    again = Sample()
    again.event("release", "unfinished").set()
    async with running(again, settings(tmp_path)) as hq:  # the next process runs it (attempt 2)
        done = await hq.result(cid)
        assert (done["status"], done["attempts"]) == ("COMPLETED", 2)


async def test_a_leased_publish_never_overtakes_a_waiting_message_of_equal_or_higher_priority(
    tmp_path: Path
) -> None:
    async with SQLiteBackend(settings(tmp_path)) as backend:
        await backend.publish("q", b"waiting", priority=5)
        assert await backend.publish_leased("q", b"same priority", priority=5) is None
        assert await backend.publish_leased("q", b"lower", priority=1) is None
        urgent = await backend.publish_leased("q", b"urgent", priority=15)
        assert urgent is not None and urgent.attempt == 1
        await urgent.ack()
        await backend.publish("q", b"keyed", key="k")
        assert await backend.publish_leased("q", b"same key, higher priority", priority=15, key="k") is None
        order = []
        deliveries = backend.consume("q", prefetch=1)
        for _ in range(5):
            delivery = await anext(deliveries)
            order.append(delivery.body)
            await delivery.ack()
        await deliveries.aclose()  # type: ignore[attr-defined]
    assert order == [b"waiting", b"same priority", b"keyed", b"same key, higher priority", b"lower"]
