"""In-process backend for tests and examples (like dramatiq's StubBroker); nothing survives a restart.

URL: none. Supports: priority (native), delay (native), ordering key (emulated: one in flight per key),
dead letters (`<queue>.dlq`), lease extension. Not shared between processes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from openhqm.backends.base import Backend, Capabilities, Delivery, Support
from openhqm.constants import DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendUnavailable

_LEASE_S = 30.0


@dataclass(order=True)
class _Message:
    sort_key: tuple[int, int] = field(compare=True)
    body: bytes = field(compare=False)
    message_id: str = field(compare=False)
    key: str | None = field(compare=False, default=None)
    attempt: int = field(compare=False, default=0)


class _Queue:
    def __init__(self) -> None:
        self.ready: list[_Message] = []
        self.delayed: set[asyncio.TimerHandle] = set()
        self.in_flight: dict[str, _Message] = {}
        self.keys_in_flight: set[str] = set()
        self.changed = asyncio.Event()


class MemoryDelivery(Delivery):
    def __init__(self, backend: MemoryBackend, queue: str, message: _Message) -> None:
        super().__init__(queue, message.body, attempt=message.attempt, message_id=message.message_id,
                         key=message.key)
        self._backend = backend
        self._message = message
        self._lease = asyncio.get_running_loop().call_later(_LEASE_S, self._expire)

    def _expire(self) -> None:
        if self.settled is None:
            self.settled = "lease expired"
            self._backend._release(self.queue, self._message, delay_s=None)

    async def extend_lease(self, seconds: float) -> None:
        self._lease.cancel()
        self._lease = asyncio.get_running_loop().call_later(seconds, self._expire)

    async def _ack(self) -> None:
        self._lease.cancel()
        self._backend._finish(self.queue, self._message)

    async def _nack(self, delay_s: float | None) -> None:
        self._lease.cancel()
        self._backend._release(self.queue, self._message, delay_s=delay_s)

    async def _dead_letter(self, reason: str) -> None:
        self._lease.cancel()
        self._backend._finish(self.queue, self._message)
        await self._backend.publish(dead_letter_queue(self.queue), self._message.body,
                                    message_id=self._message.message_id)


class MemoryBackend(Backend):
    name = "memory"
    capabilities = Capabilities(
        priority=Support.NATIVE, delay=Support.NATIVE, ordering_key=Support.EMULATED,
        dead_letter=Support.NATIVE, lease_extension=True, durable=False, shared_between_processes=False,
    )

    _queues: dict[str, _Queue]

    def __init__(self, settings: object) -> None:
        super().__init__(settings)  # type: ignore[arg-type]
        self._queues = {}
        self._seq = itertools.count()
        self._closed = asyncio.Event()
        self._connected = False

    @property
    def lease_s(self) -> float | None:
        return _LEASE_S

    def _queue(self, name: str) -> _Queue:
        if name not in self._queues:
            self._queues[name] = _Queue()
        return self._queues[name]

    async def connect(self) -> None:
        self._connected = True
        self._closed.clear()

    async def close(self) -> None:
        self._connected = False
        self._closed.set()
        for q in self._queues.values():
            q.changed.set()

    def _push(self, queue: str, message: _Message) -> None:
        q = self._queue(queue)
        heapq.heappush(q.ready, message)
        q.changed.set()

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        if not self._connected:
            raise BackendUnavailable("memory backend is closed")
        message = _Message((-priority, next(self._seq)), body, message_id or new_id(), key)
        self._schedule(queue, message, delay_s)

    def _schedule(self, queue: str, message: _Message, delay_s: float | None) -> None:
        if delay_s and delay_s > 0:
            q = self._queue(queue)
            handle: asyncio.TimerHandle

            def due() -> None:
                q.delayed.discard(handle)
                self._push(queue, message)

            handle = asyncio.get_running_loop().call_later(delay_s, due)
            q.delayed.add(handle)
        else:
            self._push(queue, message)

    def _finish(self, queue: str, message: _Message) -> None:
        q = self._queue(queue)
        q.in_flight.pop(message.message_id, None)
        if message.key is not None:
            q.keys_in_flight.discard(message.key)
            q.changed.set()

    def _release(self, queue: str, message: _Message, delay_s: float | None) -> None:
        self._finish(queue, message)
        self._schedule(queue, message, delay_s)

    def _take(self, queue: str) -> _Message | None:
        q = self._queue(queue)
        skipped: list[_Message] = []
        taken = None
        while q.ready:
            message = heapq.heappop(q.ready)
            if message.key is not None and message.key in q.keys_in_flight:
                skipped.append(message)
                continue
            taken = message
            break
        for message in skipped:
            heapq.heappush(q.ready, message)
        if taken is not None:
            taken.attempt += 1
            q.in_flight[taken.message_id] = taken
            if taken.key is not None:
                q.keys_in_flight.add(taken.key)
        return taken

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        q = self._queue(queue)
        while not self._closed.is_set():
            message = self._take(queue)
            if message is None:
                q.changed.clear()
                await q.changed.wait()
                continue
            yield MemoryDelivery(self, queue, message)

    async def depth(self, queue: str) -> int:
        q = self._queue(queue)
        return len(q.ready) + len(q.delayed)

    async def ping(self) -> None:
        if not self._connected:
            raise BackendUnavailable("memory backend is closed")

    async def purge(self, queue: str) -> int:
        q = self._queue(queue)
        count = len(q.ready) + len(q.delayed)
        for handle in q.delayed:
            handle.cancel()
        q.ready.clear()
        q.delayed.clear()
        return count
