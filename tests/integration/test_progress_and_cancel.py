"""Handlers report progress (`job.progress()`), and a running request can be cancelled: an async
handler and a forward are interrupted, a sync handler sees `job.cancelled`. In the test process
(tests/harness.py) on the SQLite and memory queues, plus a listener and a worker runtime that share
only a SQLite data directory, as two processes would."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from openhqm import OpenHQM
from openhqm.cli import cli
from openhqm.constants import Status
from openhqm.envelope import Envelope
from openhqm.results.base import RequestRecord
from openhqm.runtime import Runtime
from openhqm.worker.handlers import Job
from tests.harness import InProcess, eventually, in_process, served, settings, wait_until
from tests.integration.http_servers import serve

STOP_WAITING_S = 30.0  # a sync handler's bound on waiting for its cancel, so a failing test ends


@dataclass
class Handlers:
    """Handlers that report progress and hold until released or cancelled; what they saw is kept."""

    app: OpenHQM = field(default_factory=OpenHQM)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    release: dict[str, asyncio.Event] = field(default_factory=dict)
    go: dict[str, asyncio.Event] = field(default_factory=dict)
    interrupted: list[str] = field(default_factory=list)
    saw_cancelled: threading.Event = field(default_factory=threading.Event)
    thread_started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.app.handler("steps")(self.steps)
        self.app.handler("steps_in_thread")(self.steps_in_thread)
        self.app.handler("chatty")(self.chatty)
        self.app.handler("quick")(self.quick)
        self.app.handler("again")(self.again)
        self.app.handler("rows")(self.rows)

    def event(self, events: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        return events.setdefault(name, asyncio.Event())

    async def steps(self, job: Job) -> Any:
        name = job.payload["name"]
        job.progress(0.5, "halfway")
        self.event(self.started, name).set()
        try:
            await self.event(self.release, name).wait()
        except asyncio.CancelledError:
            self.interrupted.append(name)
            raise
        return "done"

    def steps_in_thread(self, job: Job) -> Any:  # sync: runs in a thread
        job.progress(0.25, "in a thread")
        self.thread_started.set()
        deadline = time.monotonic() + STOP_WAITING_S
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)  # the documented pattern: a sync handler checks job.cancelled as it works
        if job.cancelled:
            self.saw_cancelled.set()
            return "stopped early"
        return "ran to the end"

    async def chatty(self, job: Job) -> Any:
        await self.event(self.go, job.payload["name"]).wait()
        for step in range(1, 101):  # one loop turn: a hundred reports, one write
            job.progress(step / 100, f"step {step}")
        self.event(self.started, job.payload["name"]).set()
        await self.event(self.release, job.payload["name"]).wait()
        return "done"


    async def quick(self, job: Job) -> Any:
        job.progress(0.3, "started")
        job.progress(0.9, "nearly there")  # in the same turn: still pending when it returns
        return "done"

    def rows(self, job: Job) -> Any:  # sync: a thousand reports from a thread
        for row in range(1, 1001):
            job.progress(row / 1000, f"row {row}")
        return "imported"

    async def again(self, job: Job) -> Any:
        """Reports progress and fails on its first attempt; holds on the second without reporting."""
        if job.attempt == 1:
            job.progress(0.7, "first try")  # stored as the attempt ends: the retry must clear it
            raise RuntimeError("first attempt fails")
        self.event(self.started, "again").set()
        await self.event(self.release, "again").wait()
        return job.attempt


@pytest.fixture(params=["sqlite", "memory"])
def queue_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
async def hq(handlers: Handlers, queue_type: str, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(handlers.app, settings(tmp_path, queue={"type": queue_type})) as running:
        yield running


async def status(hq: InProcess, cid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await hq.client.get(f"/api/v1/status/{cid}")).json()
    return body


async def test_progress_reported_by_an_async_handler_shows_in_the_status(hq: InProcess, handlers: Handlers) -> None:
    cid = (await hq.accepted({"name": "a"}, handler="steps"))["correlation_id"]
    await asyncio.wait_for(handlers.event(handlers.started, "a").wait(), 10)
    shown: dict[str, Any] = {}

    async def progress_shown() -> bool:
        shown.update(await status(hq, cid))
        return bool(shown.get("progress"))

    async with asyncio.timeout(10):
        while not await progress_shown():
            await asyncio.sleep(0.02)  # the write is throttled and asynchronous: nothing to await here
    assert shown["status"] == "PROCESSING"
    assert shown["progress"]["fraction"] == 0.5 and shown["progress"]["message"] == "halfway"
    assert shown["progress"]["updated_at"].endswith("Z"), "RFC 3339 like every other time"
    handlers.event(handlers.release, "a").set()
    assert (await hq.result(cid))["status"] == "COMPLETED"


async def test_progress_reported_from_a_sync_handlers_thread_is_stored(hq: InProcess, handlers: Handlers) -> None:
    cid = (await hq.accepted({}, handler="steps_in_thread"))["correlation_id"]
    store = hq.runtime.store

    async def stored_progress() -> Any:
        record = await store.get(cid)
        return record.progress if record is not None else None

    async with asyncio.timeout(10):
        while await stored_progress() is None:
            await asyncio.sleep(0.02)  # written from another thread: nothing to await here
    progress = await stored_progress()
    assert (progress.fraction, progress.message) == (0.25, "in a thread")
    await hq.client.delete(f"/api/v1/requests/{cid}")  # lets the thread end


async def test_a_burst_of_progress_reports_is_one_write_of_the_latest(hq: InProcess, handlers: Handlers) -> None:
    cid = (await hq.accepted({"name": "c"}, handler="chatty"))["correlation_id"]
    updates = hq.runtime.store.subscribe(cid)  # every change this process makes to the record
    handlers.event(handlers.go, "c").set()
    await asyncio.wait_for(handlers.event(handlers.started, "c").wait(), 10)
    seen: list[RequestRecord] = []
    while not seen or seen[-1].progress is None:
        seen.append(await asyncio.wait_for(updates.get(), 10))
    assert [r.progress.message for r in seen if r.progress is not None] == ["step 100"]
    handlers.event(handlers.release, "c").set()
    assert (await hq.result(cid))["status"] == "COMPLETED"


async def test_the_last_progress_before_the_handler_returns_is_kept_with_the_result(hq: InProcess) -> None:
    cid = (await hq.accepted({}, handler="quick"))["correlation_id"]
    assert (await hq.result(cid))["status"] == "COMPLETED"
    shown = await status(hq, cid)
    assert (shown["progress"]["fraction"], shown["progress"]["message"]) == (0.9, "nearly there")


async def test_a_sync_handlers_last_report_lands_however_many_came_before(hq: InProcess) -> None:
    cid = (await hq.accepted({}, handler="rows"))["correlation_id"]
    assert (await hq.result(cid))["result"] == "imported"
    shown = await status(hq, cid)
    assert (shown["progress"]["fraction"], shown["progress"]["message"]) == (1.0, "row 1000")


async def test_a_retry_starts_with_no_progress(hq: InProcess, handlers: Handlers) -> None:
    cid = (await hq.accepted({}, handler="again"))["correlation_id"]
    await asyncio.wait_for(handlers.event(handlers.started, "again").wait(), 10)
    shown = await status(hq, cid)
    assert (shown["status"], shown["attempts"], shown["progress"]) == ("PROCESSING", 2, None)
    handlers.event(handlers.release, "again").set()
    assert (await hq.result(cid))["result"] == 2


def test_progress_outside_zero_to_one_is_a_value_error() -> None:
    job = Job(Envelope(id="x", body=b"{}"), attempt=1)
    job.progress(0)
    job.progress(1, "done")
    for wrong in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="from 0 to 1"):
            job.progress(wrong)


async def test_cancelling_a_running_async_handler_interrupts_it_and_it_is_not_retried(
    hq: InProcess, handlers: Handlers
) -> None:
    cid = (await hq.accepted({"name": "r"}, handler="steps"))["correlation_id"]
    await asyncio.wait_for(handlers.event(handlers.started, "r").wait(), 10)
    response = await hq.client.delete(f"/api/v1/requests/{cid}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELLED"
    await eventually(lambda: handlers.interrupted == ["r"])
    pool = hq.runtime.pool
    assert pool is not None
    await eventually(lambda: pool.in_flight == 0)  # settled: acked, not handed back
    assert (await hq.result(cid, wait_s=0))["status"] == "CANCELLED"
    assert handlers.interrupted == ["r"], "it ran once: a cancelled request is not retried"


async def test_a_sync_handler_sees_cancelled_and_its_answer_does_not_overwrite_the_cancel(
    hq: InProcess, handlers: Handlers
) -> None:
    cid = (await hq.accepted({}, handler="steps_in_thread"))["correlation_id"]
    await asyncio.to_thread(handlers.thread_started.wait, 10)
    response = await hq.client.delete(f"/api/v1/requests/{cid}")
    assert response.json()["status"] == "CANCELLED"
    await asyncio.to_thread(handlers.saw_cancelled.wait, 10)
    assert handlers.saw_cancelled.is_set()
    pool = hq.runtime.pool
    assert pool is not None
    await eventually(lambda: pool.in_flight == 0)
    body = await hq.result(cid, wait_s=0)
    assert (body["status"], body["result"]) == ("CANCELLED", None)


@dataclass
class SlowBackend:
    """An HTTP backend that answers only when its caller goes away: it notices the abort."""

    called: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)

    async def slow(self, request: Request) -> JSONResponse:
        await request.body()
        self.called.set()
        message = await request.receive()  # after the body, the next message is the disconnect
        if message["type"] == "http.disconnect":
            self.aborted.set()
        return JSONResponse({"late": True})


@pytest.fixture
def slow_backend() -> Iterator[tuple[SlowBackend, str]]:
    backend = SlowBackend()
    with serve(Starlette(routes=[Route("/slow", backend.slow, methods=["POST"])])) as url:
        yield backend, url


async def test_cancelling_a_running_forward_aborts_its_http_call(
    slow_backend: tuple[SlowBackend, str], tmp_path: Path
) -> None:
    backend, url = slow_backend
    proxy = {"enabled": True, "endpoints": {"slow": {"url": f"{url}/slow"}}, "default_endpoint": "slow"}
    async with in_process(OpenHQM(), settings(tmp_path, proxy=proxy)) as hq:
        cid = (await hq.accepted({"n": 1}, endpoint="slow"))["correlation_id"]
        await asyncio.to_thread(backend.called.wait, 10)
        response = await hq.client.delete(f"/api/v1/requests/{cid}")
        assert response.json()["status"] == "CANCELLED"
        await asyncio.to_thread(backend.aborted.wait, 10)
        assert backend.aborted.is_set(), "the backend saw the call go away"
        assert (await hq.result(cid, wait_s=0))["status"] == "CANCELLED"


async def test_a_cancel_taken_by_a_listener_stops_the_job_in_a_separate_worker(tmp_path: Path) -> None:
    worker_side, listener_side = Handlers(), Handlers()  # one app each, as in two processes
    async with Runtime(worker_side.app, settings(tmp_path), workers=True, settle_gc=False) as worker, \
            in_process(listener_side.app, settings(tmp_path), workers=False) as listener:
        cid = (await listener.accepted({"name": "far"}, handler="steps"))["correlation_id"]
        await asyncio.wait_for(worker_side.event(worker_side.started, "far").wait(), 10)
        response = await listener.client.delete(f"/api/v1/requests/{cid}")
        assert response.status_code == 200 and response.json()["status"] == "CANCELLED"
        await eventually(lambda: worker_side.interrupted == ["far"])
        pool = worker.pool
        assert pool is not None
        await eventually(lambda: pool.in_flight == 0)
        record = await listener.runtime.store.get(cid)
        assert record is not None and record.status == Status.CANCELLED


def test_openhqm_wait_shows_a_handlers_progress_and_cancel_stops_it(tmp_path: Path) -> None:
    handlers = Handlers()
    # CliRunner swaps sys.stdout for the whole process: keep the listener thread's logs out of it.
    with structlog.testing.capture_logs(), served(handlers.app, settings(tmp_path)) as url:
        cid = httpx.post(f"{url}/api/v1/submit", json={"payload": {}, "metadata": {"handler": "steps_in_thread"}}
                         ).json()["correlation_id"]
        wait_until(lambda: httpx.get(f"{url}/api/v1/status/{cid}").json()["progress"])
        waited = CliRunner().invoke(cli, ["wait", cid, "--timeout", "2.5", "--url", url])
        assert waited.exit_code == 3, waited.output
        assert "25% in a thread" in waited.stderr.splitlines()
        cancelled = CliRunner().invoke(cli, ["cancel", cid, "--url", url])
        assert cancelled.exit_code == 0, cancelled.output
        assert handlers.saw_cancelled.wait(10)
        finished = CliRunner().invoke(cli, ["wait", cid, "--timeout", "10", "--url", url])
        assert finished.exit_code == 1 and json.loads(finished.stdout)["status"] == "CANCELLED"


async def test_the_events_stream_sends_the_progress_a_handler_reported(hq: InProcess, handlers: Handlers) -> None:
    cid = (await hq.accepted({"name": "e"}, handler="steps"))["correlation_id"]
    await asyncio.wait_for(handlers.event(handlers.started, "e").wait(), 10)
    async with asyncio.timeout(10):
        while not (await status(hq, cid)).get("progress"):
            await asyncio.sleep(0.02)  # the write is throttled and asynchronous: nothing to await here
    stream = asyncio.create_task(hq.client.get(f"/api/v1/requests/{cid}/events"))
    handlers.event(handlers.release, "e").set()
    body = (await asyncio.wait_for(stream, 30)).text
    events = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    assert events[0]["progress"]["fraction"] == 0.5 and events[0]["progress"]["message"] == "halfway"
    assert events[-1]["status"] == "COMPLETED"


async def test_the_python_client_reads_progress_from_the_status(hq: InProcess, handlers: Handlers) -> None:
    import msgspec

    from openhqm.client import RequestStatus

    cid = (await hq.accepted({"name": "c"}, handler="steps"))["correlation_id"]
    await asyncio.wait_for(handlers.event(handlers.started, "c").wait(), 10)
    async with asyncio.timeout(10):
        while not (body := await status(hq, cid)).get("progress"):
            await asyncio.sleep(0.02)  # the write is throttled and asynchronous: nothing to await here
    read = msgspec.json.decode(json.dumps(body), type=RequestStatus)
    assert read.progress is not None and (read.progress.fraction, read.progress.message) == (0.5, "halfway")
    handlers.event(handlers.release, "c").set()
    assert (await hq.result(cid))["status"] == "COMPLETED"
