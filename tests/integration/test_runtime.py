"""The composition root (openhqm/runtime.py): what starts, in which order it stops, and where a
worker's reply goes, with real parts (SQLite and memory queues, the SQLite store) in this process."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from openhqm import OpenHQM
from openhqm.errors import OpenHQMError
from openhqm.runtime import Runtime
from openhqm.worker.replies import BrokerReplies, LocalReplies
from tests.harness import Sample, in_process, settings


async def test_stopping_lets_in_flight_jobs_finish_and_store_their_result_before_connections_close(
    tmp_path: Path,
) -> None:
    sample = Sample()
    config = settings(tmp_path, worker={"shutdown_timeout_s": 30})
    async with in_process(sample.app, config) as hq:
        cid = (await hq.accepted({"name": "in-flight", "hold": True}, handler="trace"))["correlation_id"]
        await asyncio.wait_for(sample.event("started", "in-flight").wait(), 10)
        stopping = asyncio.create_task(hq.runtime.__aexit__(None, None, None))
        await asyncio.sleep(0)  # let the stop begin: the pool drains first, everything else stays open
        assert not stopping.done(), "the stop waits for the job"
        sample.event("release", "in-flight").set()
        await stopping
    async with Runtime(OpenHQM(), config, settle_gc=False) as reopened:  # the same data_dir, nothing running
        record = await reopened.store.get(cid)
    assert record is not None and record.status == "COMPLETED"


async def test_a_part_that_fails_to_start_closes_the_parts_started_before_it(tmp_path: Path) -> None:
    with socket.socket() as refusing:  # bound, never listening: connecting to it is refused
        refusing.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{refusing.getsockname()[1]}/0"
        runtime = Runtime(Sample().app, settings(tmp_path, queue={"type": "memory"},
                                                 results={"type": "redis", "redis": {"url": url}}),
                          listener=True, workers=True, settle_gc=False)
        with pytest.raises(OpenHQMError):
            await runtime.__aenter__()
    health = await runtime.backend.health()
    assert not health.ok, "the queue connected first and was closed again"
    assert runtime.pool is None, "nothing after the failing part started"


async def test_serve_applies_replies_in_process_and_a_worker_alone_publishes_them(tmp_path: Path) -> None:
    serve = Runtime(OpenHQM(), settings(tmp_path), listener=True, workers=True, settle_gc=False)
    worker = Runtime(OpenHQM(), settings(tmp_path), workers=True, settle_gc=False)
    assert isinstance(serve.replies, LocalReplies)
    assert isinstance(worker.replies, BrokerReplies)


async def test_a_listener_and_a_worker_runtime_round_trip_over_the_response_queue(tmp_path: Path) -> None:
    worker_side, listener_side = Sample(), Sample()  # one app each, as in two processes
    async with Runtime(worker_side.app, settings(tmp_path), workers=True, settle_gc=False), \
            in_process(listener_side.app, settings(tmp_path), workers=False) as listener:
        response = await listener.submit({"n": 1}, headers={"Prefer": "wait=20"}, handler="record")
        assert response.status_code == 200, response.text
        assert response.json()["result"] == {"n": 1}
    assert (len(worker_side.runs), len(listener_side.runs)) == (1, 0), "the listener alone has no pool"


def test_an_app_reads_no_settings_until_they_are_needed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENHQM_WORKER__CONCURRENCY", "many")  # invalid: reading it would fail
    app = OpenHQM()  # what importing a user's module does
    app.handler("noop")(lambda job: None)
    app.settings = settings(tmp_path, worker={"concurrency": 3})  # what the runtime binds
    assert app.settings.worker.concurrency == 3
    with pytest.raises(OpenHQMError, match=r"worker\.concurrency"):
        _ = OpenHQM().settings  # unbound: loaded on first read, from the environment
