"""Reads one consume() iterator for a test, as a worker does: a pump task feeds a small queue.

The pump lets a test wait with a timeout without cancelling the iterator itself (a cancelled async
generator is finished for good).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from openhqm.backends import Backend, Delivery


class Receiver:
    def __init__(self, backend: Backend, queue: str, prefetch: int = 1) -> None:
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=1)
        self._pump = asyncio.ensure_future(self._run(backend, queue, prefetch))

    async def _run(self, backend: Backend, queue: str, prefetch: int) -> None:
        async for delivery in backend.consume(queue, prefetch=prefetch):
            await self._inbox.put(delivery)

    async def next(self, timeout_s: float = 20.0) -> Delivery:
        get = asyncio.ensure_future(self._inbox.get())
        done, _ = await asyncio.wait({get, self._pump}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if self._pump in done:
            self._pump.result()
            raise AssertionError("consume() ended while a delivery was awaited")
        raise TimeoutError(f"no delivery within {timeout_s} s")

    async def nothing_within(self, seconds: float) -> bool:
        """True when no delivery arrives within `seconds`."""
        try:
            delivery = await self.next(seconds)
        except TimeoutError:
            return True
        await delivery.nack()
        return False

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
