"""Tasks started on the side (a callback delivery, an async lifecycle hook, a driver's hand-over),
referenced until done (asyncio itself keeps only weak references) so that shutdown can wait for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Awaitable[Any],
              on_done: Callable[[asyncio.Future[Any]], None] | None = None) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)

    async def wait(self) -> None:
        """Until every task started so far has ended; how they ended is theirs to handle."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
