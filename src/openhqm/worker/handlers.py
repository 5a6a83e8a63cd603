"""Handlers: plain async or sync functions registered by name, called with a `Job`."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from openhqm.config import RetrySettings
from openhqm.envelope import Envelope
from openhqm.errors import DeadLetter, RequestRejected
from openhqm.worker.batching import Batcher, check_batch
from openhqm.worker.control import JobControl


@dataclass
class Job:
    """What a handler receives: the decoded payload plus the request's context.

    `state` belongs to this attempt alone (middleware timings and the like): unlike `metadata`, it
    never travels with the request when it is retried or deferred.
    """

    envelope: Envelope
    attempt: int
    state: dict[str, Any] = field(default_factory=dict)
    control: JobControl = field(default_factory=JobControl, repr=False)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0 to 1, and what it is doing): shown in the request's status
        and events. Call it as often as you like, from an async or a sync handler; it does not wait
        for the write, and writes are spaced out (the latest value always lands). ValueError outside [0, 1]."""
        self.control.report(fraction, message)

    @property
    def cancelled(self) -> bool:
        """True once the client cancelled the request. An async handler is interrupted at its next
        await; a sync handler runs on in its thread, so a long one should check this and return."""
        return self.control.cancelled

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def session_id(self) -> str | None:
        return self.envelope.session_id

    @property
    def headers(self) -> dict[str, str]:
        return self.envelope.headers

    @property
    def metadata(self) -> dict[str, Any]:
        return self.envelope.metadata

    @property
    def body(self) -> bytes:
        return self.envelope.body

    @property
    def payload(self) -> Any:
        """The JSON payload; raw bodies that are not JSON come through as bytes."""
        if not self.envelope.body:
            return None
        try:
            return orjson.loads(self.envelope.body)
        except orjson.JSONDecodeError:
            if self.envelope.raw:
                return self.envelope.body
            raise DeadLetter("payload is not valid JSON") from None


HandlerFunc = Callable[[Job], Any] | Callable[[Job], Awaitable[Any]]


@dataclass(frozen=True)
class Handler:
    name: str
    func: HandlerFunc
    retry: RetrySettings | None = None
    timeout_s: float | None = None
    is_async: bool = field(default=False)
    batch: Batcher[Job] | None = field(default=None, repr=False)  # set: `func` takes a list of jobs

    async def __call__(self, job: Job) -> Any:
        if self.batch is not None:  # the one check a single-request handler pays
            return await self.batch.submit(job)
        if self.is_async:
            return await self.func(job)
        # Sync handlers run in the default thread pool so they never block the event loop.
        with job.control.blocking():
            return await asyncio.to_thread(self.func, job)

    async def call_batch(self, jobs: list[Job]) -> Any:
        """One call of a batch handler with its gathered jobs (a sync one in a thread)."""
        func: Any = self.func
        if self.is_async:
            return await func(jobs)
        with contextlib.ExitStack() as stack:
            for job in jobs:
                stack.enter_context(job.control.blocking())
            return await asyncio.to_thread(func, jobs)


def echo(job: Job) -> Any:
    """Built-in: returns the payload unchanged."""
    return job.payload


async def _echo(job: Job) -> Any:
    return echo(job)


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.register("echo", _echo)

    def register(self, name: str, func: HandlerFunc, *, retry: RetrySettings | None = None,
                 timeout_s: float | None = None, batch_size: int | None = None,
                 batch_wait_s: float | None = None) -> Handler:
        """With `batch_size` or `batch_wait_s`, `func` is a batch handler: it takes `list[Job]` (up to
        batch_size jobs gathered for at most batch_wait_s; defaults 100 and 0.5 s) and returns a list
        with one result per job, in order; an exception instance in the list fails that job alone."""
        is_async = inspect.iscoroutinefunction(func)
        if batch_size is None and batch_wait_s is None:
            handler = Handler(name, func, retry, timeout_s, is_async=is_async)
        else:
            size = 100 if batch_size is None else batch_size
            wait_s = 0.5 if batch_wait_s is None else batch_wait_s
            check_batch(f"handler {name!r}", size, wait_s)
            holder: list[Handler] = []
            batcher: Batcher[Job] = Batcher(name, lambda jobs: holder[0].call_batch(jobs), size=size,
                                            wait_s=wait_s)
            handler = Handler(name, func, retry, timeout_s, is_async=is_async, batch=batcher)
            holder.append(handler)
        self._handlers[name] = handler
        return handler

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._handlers, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RequestRejected(
                f"unknown handler '{name}'{hint} valid handlers: {', '.join(self.names)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers
