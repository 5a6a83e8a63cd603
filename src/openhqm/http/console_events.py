"""`GET /api/v1/console/events`: the figures open consoles show, pushed every 2 s (docs/console.md).

One reading per process serves every open console (a Ticker), so ten engineers watching the same
incident cost the store what one does; it stops when the last console closes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from openhqm.bridge import Bridge
from openhqm.logging import get_logger
from openhqm.timefmt import rfc3339

log = get_logger("openhqm.console")

EVENTS_PATH = "/api/v1/console/events"
TICK_S = 2.0
EVENTS_MAX_S = 3600.0  # a stream ends after this; the browser's EventSource reconnects by itself

# Documented in docs/console.md rather than /openapi.json: a stream that never ends by itself would
# hang every generic client generated from or fuzzing the document.
events_router = APIRouter(include_in_schema=False)

Reading = dict[str, Any]
T = TypeVar("T")
SERIES_MINUTES = 15
SERIES_REFRESH_S = 10.0


class Figures:
    """What the overview shows, as the public routes give it: GET /api/v1/queues, each queue's
    /series?minutes=15, GET /api/v1/workers, GET /api/v1/flow and the /ready checks. A part that cannot be read is null
    (the console then says so), and the rest still arrives. The series, the costliest part, is read
    every SERIES_REFRESH_S (its points are per minute) and repeated in the ticks between."""

    def __init__(self, bridge: Callable[[], Bridge]) -> None:
        self._bridge = bridge
        self._series: dict[str, Any] = {}
        self._series_at = -SERIES_REFRESH_S

    async def __call__(self) -> Reading:
        bridge = self._bridge()
        queues = await _part(bridge.queues.overview())
        now = time.monotonic()
        if now - self._series_at >= SERIES_REFRESH_S or set(self._series) != {q["name"] for q in queues or []}:
            self._series = {queue["name"]: await _part(bridge.queues.series(queue["name"], SERIES_MINUTES))
                            for queue in queues or []}
            self._series_at = now
        health = await _part(bridge.health())
        ready = None if health is None else {name: {"ok": check.ok, "detail": check.detail}
                                             for name, check in zip(("queue", "results"), health, strict=True)}
        return {"at": rfc3339(time.time()), "queues": queues, "series": self._series,
                "workers": await _part(bridge.queues.workers()), "flow": await _part(bridge.flow.view()),
                "ready": ready}


async def _part(reading: Awaitable[T]) -> T | None:
    try:
        return await reading
    except Exception as exc:  # a broker or store outage: that part is unknown, the stream goes on
        log.warning("console figures: a part is unavailable", error=str(exc))
        return None


class Ticker:
    """Reads every TICK_S while anyone listens and hands each listener the newest reading."""

    def __init__(self, read: Callable[[], Awaitable[Reading]], interval_s: float = TICK_S) -> None:
        self._read = read
        self.interval_s = interval_s
        self._listeners: set[asyncio.Queue[Reading]] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Queue[Reading]]:
        inbox: asyncio.Queue[Reading] = asyncio.Queue(maxsize=1)
        self._listeners.add(inbox)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="openhqm-console-ticker")
        try:
            yield inbox
        finally:
            self._listeners.discard(inbox)
            if not self._listeners and self._task is not None:
                self._task.cancel()
                self._task = None

    async def _run(self) -> None:
        while self._listeners:
            try:
                reading = await self._read()
            except Exception as exc:  # the next tick tries again; the streams stay open
                log.warning("console figures failed", error=str(exc))
                await asyncio.sleep(self.interval_s)
                continue
            for inbox in list(self._listeners):
                if inbox.full():  # a slow reader gets the newest reading, not a backlog
                    inbox.get_nowait()
                inbox.put_nowait(reading)
            await asyncio.sleep(self.interval_s)  # the period itself: figures are sampled, not evented


@events_router.get(EVENTS_PATH, response_class=EventSourceResponse)
async def console_events(request: Request) -> EventSourceResponse:
    """Server-Sent Events for open consoles: a `tick` every 2 s with the overview's figures; the
    console refreshes what else it shows on each."""
    ticker: Ticker = request.app.state.console_ticker
    return EventSourceResponse(ticks(ticker), ping=None)


async def ticks(ticker: Ticker) -> AsyncIterator[ServerSentEvent]:
    deadline = time.monotonic() + EVENTS_MAX_S
    with ticker.listen() as inbox:
        while time.monotonic() < deadline:
            reading = await inbox.get()
            yield ServerSentEvent(orjson.dumps(reading).decode(), event="tick", retry=int(ticker.interval_s * 1000))
