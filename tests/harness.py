"""OpenHQM in the test process: the same Runtime and FastAPI app as `openhqm serve`, no subprocess.

Two ways in, both on the real queue and result store named by the settings (SQLite and the memory
queue need no service):

    async with in_process(sample.app, settings(tmp_path)) as hq:      # one event loop, the test's
        response = await hq.client.post("/api/v1/submit", json=...)    # httpx.ASGITransport

    with served(sample.app, settings(tmp_path)) as url:                  # uvicorn on port 0 in a
        httpx.get(url + "/health")                                       # thread, for sync clients

`in_process` enters the runtime itself (ASGITransport runs no lifespan), so a test can also reach
the bridge, the pool and the backend, and the handlers below can wait on asyncio events the test
sets: "the blocker is running" is an event, not a sleep. `served` runs the app's own lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from openhqm import OpenHQM
from openhqm.config import Settings, load_settings
from openhqm.errors import DeadLetter
from openhqm.http.app import create_app
from openhqm.runtime import Runtime
from openhqm.worker.handlers import Job
from tests.integration.http_servers import serve

# What the end-to-end tests have always run with: quick retries, no cleanup during a test, a small
# body limit so 413 is cheap to reach.
BASE_SETTINGS: dict[str, Any] = {
    "worker": {"retry": {"max_attempts": 2, "base_delay_s": 0.05, "max_delay_s": 0.1}},
    "results": {"cleanup_interval_s": 3600},
    "server": {"max_body_bytes": 4096},
}


def settings(data_dir: Path, **sections: Any) -> Settings:
    """BASE_SETTINGS with `sections` merged in (nested dicts, as in YAML), on `data_dir`."""
    return load_settings(None, _merge({**BASE_SETTINGS, "data_dir": data_dir}, sections))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Run:
    correlation_id: str
    session_id: str | None
    payload: Any
    attempt: int
    start: float
    end: float = 0.0

    @property
    def name(self) -> Any:
        return self.payload.get("name") if isinstance(self.payload, dict) else None


@dataclass
class Sample:
    """The handlers the tests submit to, recording in memory what ran (tests/e2e/sample_app.py's
    counterpart for the in-process harness)."""

    app: OpenHQM = field(default_factory=OpenHQM)
    runs: list[Run] = field(default_factory=list)
    completed_hooks: list[str] = field(default_factory=list)
    failing: bool = True  # the `flaky` handler fails while this is set
    _events: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        handler = self.app.handler
        handler("record")(self.record)
        handler("trace")(self.record)
        handler("flaky")(self.flaky)
        handler("give_up")(self.give_up)
        handler("not_json")(self.not_json)
        handler("fail_once")(self.fail_once)
        self.app.on("completed")(lambda record: self.completed_hooks.append(record.correlation_id))

    def event(self, kind: str, name: str) -> asyncio.Event:
        """`started`/`release` events of a payload `{"name": ..., "hold": true}` (in_process only)."""
        return self._events.setdefault((kind, name), asyncio.Event())

    async def record(self, job: Job) -> Any:
        """Records the run; sleeps `sleep_s`, or with `hold` waits until the test releases it."""
        payload = job.payload if isinstance(job.payload, dict) else {}
        run = Run(job.correlation_id, job.session_id, job.payload, job.attempt, time.time())
        if payload.get("hold"):
            self.event("started", payload["name"]).set()
            await self.event("release", payload["name"]).wait()
        await asyncio.sleep(float(payload.get("sleep_s", 0)))
        run.end = time.time()
        self.runs.append(run)
        return job.payload

    def flaky(self, job: Job) -> Any:  # a sync handler: it runs in a thread
        if self.failing:
            raise RuntimeError("marker present")
        return "recovered"

    async def give_up(self, job: Job) -> Any:
        raise DeadLetter("input can never succeed")

    async def not_json(self, job: Job) -> Any:
        return b"\x00raw" if job.payload == "bytes" else 2**70

    async def fail_once(self, job: Job) -> Any:
        if job.attempt == 1:
            raise RuntimeError("first attempt fails")
        return {"attempt": job.attempt}

    def ran(self, correlation_id: str) -> int:
        return sum(run.correlation_id == correlation_id for run in self.runs)


@dataclass
class InProcess:
    runtime: Runtime
    client: httpx.AsyncClient

    async def submit(self, payload: Any, *, headers: dict[str, str] | None = None,
                     **metadata: Any) -> httpx.Response:
        return await self.client.post("/api/v1/submit", json={"payload": payload, "metadata": metadata},
                                      headers=headers)

    async def accepted(self, payload: Any, **metadata: Any) -> dict[str, Any]:
        """Submit and insist on 202 (the broker took it): the body."""
        response = await self.submit(payload, **metadata)
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    async def result(self, correlation_id: str, wait_s: float = 30) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/response/{correlation_id}", params={"wait": wait_s})
        body: dict[str, Any] = response.json()
        return body


@asynccontextmanager
async def in_process(app: OpenHQM, settings: Settings, *, workers: bool = True) -> AsyncIterator[InProcess]:
    """The listener (and, with `workers`, the pool) running in this event loop."""
    app.settings = settings
    api = create_app(app, run_workers=workers, settle_gc=False)
    runtime: Runtime = api.state.runtime
    transport = httpx.ASGITransport(app=api)
    async with runtime, httpx.AsyncClient(transport=transport, base_url="http://openhqm.test",
                                          timeout=60) as client:
        yield InProcess(runtime, client)


@contextmanager
def served(app: OpenHQM, settings: Settings, *, workers: bool = True) -> Iterator[str]:
    """The app on a real socket (127.0.0.1, port 0) in a thread, lifespan and all: its base URL."""
    app.settings = settings
    api = create_app(app, run_workers=workers, settle_gc=False)
    with serve(api, lifespan="on", timeout_graceful_shutdown=5) as url:
        yield url


async def eventually(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Until `condition()` holds: for state another part updates with no event to await."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """The same for a test thread watching a `served` app, whose loop runs in another thread."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
