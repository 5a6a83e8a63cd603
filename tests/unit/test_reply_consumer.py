"""The listener's reply consumer (listener/replies.py) over the memory backend and result store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from openhqm.backends.memory import MemoryBackend
from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.envelope import Reply, encode
from openhqm.listener.replies import Replies
from openhqm.results.base import RequestRecord
from openhqm.results.memory import MemoryResultStore


class GatedStore(MemoryResultStore):
    """Holds the write of one request's result until the test opens the gate."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def _transition(self, correlation_id: str, changes: dict[str, Any],
                          allowed_from: Any) -> RequestRecord | None:
        if correlation_id == self.held:
            self.reached.set()
            await self.gate.wait()
        return await super()._transition(correlation_id, changes, allowed_from)


def pending(correlation_id: str) -> RequestRecord:
    now = time.time()
    return RequestRecord(correlation_id=correlation_id, status=Status.PENDING, submitted_at=now, updated_at=now)


async def test_a_reply_whose_store_write_waits_does_not_hold_back_the_replies_behind_it() -> None:
    store = GatedStore(held="slow")
    async with MemoryBackend(Settings()) as backend:
        for correlation_id in ("slow", "quick"):
            await store.create(pending(correlation_id))
            await backend.publish("replies", encode(Reply(correlation_id=correlation_id, status="COMPLETED")))
        consumer = asyncio.create_task(Replies(backend, store, "replies", None).consume())
        try:
            await store.reached.wait()
            quick = await store.wait("quick", timeout_s=10)
            assert quick is not None and quick.status == Status.COMPLETED  # while "slow" is still held
            store.gate.set()
            slow = await store.wait("slow", timeout_s=10)
            assert slow is not None and slow.status == Status.COMPLETED
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
