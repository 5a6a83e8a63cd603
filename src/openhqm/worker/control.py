"""One running job's link to its stored record: the progress it reports and the cancel it obeys.

Progress is written at most once per `PROGRESS_INTERVAL_S` per job, and the latest value always
lands (at the latest when the handler returns), as an `amend()` of the PROCESSING record: readers of
the request's updates see it, lifecycle hooks do not.

A cancel reaches the worker through the result store, never directly: the listener that took the
DELETE (maybe in another process) moves the record PROCESSING -> CANCELLED, and the store wakes the
`waiting()` future this job registered before its claim (at once in this process; through the SQLite
bell, Redis pub/sub or Postgres NOTIFY from others). Async work (a coroutine handler, a forward's
HTTP call) is then cancelled; a sync handler runs in a thread nothing can interrupt, so it sees
`job.cancelled` turn true and decides when to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from openhqm.constants import Status
from openhqm.errors import JobCancelled
from openhqm.logging import get_logger
from openhqm.results.base import Progress, RequestRecord, ResultStore

log = get_logger("openhqm.worker")

PROGRESS_INTERVAL_S = 0.2  # per job: a handler reporting in a tight loop costs five writes a second


class JobControl:
    """`store` None: a job with no stored record (a raw message, a Job built by hand): progress is
    checked and dropped, and nothing cancels it."""

    def __init__(self, store: ResultStore | None = None, correlation_id: str = "") -> None:
        self.store = store
        self.correlation_id = correlation_id
        self.cancelled = False
        self._loop = asyncio.get_running_loop() if store is not None else None
        self._task: asyncio.Task[object] | None = None  # the job's task while its target runs
        self._blocking = 0  # > 0 while a sync handler's thread runs: cancelling the task would not stop it
        self._interrupted = False
        self._ended = False  # past watching(): a late report from a handler's thread is dropped
        self._recheck: asyncio.Task[None] | None = None
        self._pending: Progress | None = None
        self._from_thread: Progress | None = None  # the latest a sync handler reported, not yet handed over
        self._handover = threading.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()
        self._written_at = -math.inf

    # -- cancellation -----------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self) -> Iterator[JobControl]:
        """Watch the record for a cancel while the block runs; enter it before the claim, so a
        cancel that lands right after the claim is not missed."""
        if self.store is None:
            yield self
            return
        with self.store.waiting(self.correlation_id) as finished:
            finished.add_done_callback(self._on_finished)
            try:
                yield self
            finally:
                self._ended = True
                finished.remove_done_callback(self._on_finished)
                for task in (self._recheck, self._writer):
                    if task is not None:
                        task.cancel()

    def _on_finished(self, finished: asyncio.Future[RequestRecord | None]) -> None:
        if finished.cancelled():
            return
        record = finished.result()
        if record is not None:
            self._obey(record)
        elif self.store is not None:  # another process finished it: read which way
            self._recheck = asyncio.get_running_loop().create_task(self._read_and_obey(self.store))

    async def _read_and_obey(self, store: ResultStore) -> None:
        record = await store.get(self.correlation_id)
        if record is not None:
            self._obey(record)

    def _obey(self, record: RequestRecord) -> None:
        if record.status != Status.CANCELLED or self.cancelled:
            return
        self.cancelled = True
        log.info("request cancelled while running")
        if self._task is not None and not self._blocking:
            self._interrupted = True
            self._task.cancel()

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Around a sync handler's thread: a cancel only sets `cancelled` meanwhile."""
        self._blocking += 1
        try:
            yield
        finally:
            self._blocking -= 1

    async def __aenter__(self) -> JobControl:
        """`async with control:` around the job's target (a class, not a generator: it is on every
        job's path). JobCancelled comes out of it when the request was cancelled, and the worker
        then acks without a reply; a cancel from elsewhere (shutdown) passes through."""
        if self.cancelled:
            raise JobCancelled(self.correlation_id)
        self._task = asyncio.current_task()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            if self._interrupted and task is not None and task.uncancel() == 0:
                raise JobCancelled(self.correlation_id) from None
            return
        if self._interrupted and task is not None:
            task.uncancel()  # the target swallowed our CancelledError
        if self.cancelled:  # a sync handler that returned (or raised) after the cancel
            raise JobCancelled(self.correlation_id) from exc
        if self._writer is not None:
            await self._flush()

    # -- progress ---------------------------------------------------------------------------

    def report(self, fraction: float, message: str | None = None) -> None:
        """Record progress; safe from the event loop and from a sync handler's thread."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"progress message must be a string or None, got {type(message).__name__}")
        if self._loop is None:
            return
        progress = Progress(fraction=float(fraction), message=message, updated_at=time.time())
        if _running_loop() is self._loop:
            self._schedule(progress)
            return
        with self._handover:  # one wake-up of the loop per handover, however often the thread reports
            waiting, self._from_thread = self._from_thread, progress
        if waiting is None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads it any more
                self._loop.call_soon_threadsafe(self._take_from_thread)

    def _take_from_thread(self) -> None:
        with self._handover:
            progress, self._from_thread = self._from_thread, None
        if progress is not None:
            self._schedule(progress)

    def _schedule(self, progress: Progress) -> None:
        if self._ended:
            return
        self._pending = progress
        if self._writer is None and self._loop is not None:
            self._writer = self._loop.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending is not None:
            due_in_s = self._written_at + PROGRESS_INTERVAL_S - loop.time()
            if due_in_s > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):  # the throttle; _flush cuts it short
                    async with asyncio.timeout(due_in_s):
                        await self._hurry.wait()
            progress, self._pending = self._pending, None
            self._written_at = loop.time()
            await self._write(progress)
        self._writer = None

    async def _write(self, progress: Progress) -> None:
        if self.store is None or self.cancelled:
            return
        try:
            await self.store.amend(self.correlation_id, Status.PROCESSING, progress=progress)
        except Exception as exc:  # progress is advisory: a failed write must not fail the job
            log.warning("progress not stored", error=str(exc))

    async def _flush(self) -> None:
        """Write the latest progress now rather than at its throttled time."""
        writer = self._writer
        if writer is not None:
            self._hurry.set()
            await asyncio.shield(writer)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a sync handler's thread
        return None
