"""Batches: requests for one batch handler or endpoint wait here to run together in one call.

Each request still goes through the processor alone (decode, claim, flow limits, reply, retry,
ack); only the target's call is shared. `submit()` parks the request until its batch is full
(`size`) or its first member has waited `wait_s`, then one call runs for the whole list and each
waiter gets its own result back, or its own exception. The call runs in a task of its own, so a
waiter that times out or is cancelled leaves the others' call alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from openhqm.errors import ConfigError, TargetFailed

__all__ = ["Batcher", "check_batch"]

T = TypeVar("T")


def check_batch(what: str, size: int, wait_s: float) -> None:
    """ConfigError (a ValueError) naming the setting that cannot form a batch."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"{what}: batch_size must be an integer >= 1, got {size!r}")
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not wait_s > 0:
        raise ConfigError(f"{what}: batch_wait_s must be > 0 seconds, got {wait_s!r}")


class Batcher(Generic[T]):
    """Gathers items for one target; `run` gets a list and returns one result per item, in order
    (an exception instance fails that item alone)."""

    def __init__(self, name: str, run: Callable[[list[T]], Awaitable[list[Any]]], *, size: int,
                 wait_s: float) -> None:
        self.name = name
        self.size = size
        self.wait_s = wait_s
        self._run = run
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (e.g. the app served again): start afresh
            self._loop, self._items, self._waiters, self._timer = loop, [], [], None
        future: asyncio.Future[Any] = loop.create_future()
        self._items.append(item)
        self._waiters.append(future)
        if len(self._items) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._flush)
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        live = [(item, waiter) for item, waiter in zip(items, waiters, strict=True) if not waiter.done()]
        if not live:
            return
        task = asyncio.get_running_loop().create_task(self._call(live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[T, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if not isinstance(results, list | tuple) or len(results) != len(batch):
                got = f"{len(results)} results" if isinstance(results, list | tuple) else type(results).__name__
                raise TargetFailed(f"batch target {self.name!r} returned {got} for a batch of {len(batch)} "
                                   f"requests; it must return one result per request, in order")
        except Exception as exc:  # each request fails by its own retry policy
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_result(exc)
            return
        except BaseException:  # cancelled (shutdown): so are its waiters, whose deliveries go back
            for _, waiter in batch:
                waiter.cancel()
            raise
        for (_, waiter), result in zip(batch, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)
