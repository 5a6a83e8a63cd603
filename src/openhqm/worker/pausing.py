"""Whether the worker's queue is paused (`POST /api/v1/queues/{queue}/pause`), as kept in the result
store, so a pause reaches every worker process and replica that shares the store.

Watched through `ResultStore.state_written`, set by a write in this process and by the store's change
feed for other processes' (SQLite's bell, Redis pub/sub, PostgreSQL NOTIFY), and read again every
`PAUSE_POLL_S` should a notification be lost: a worker sees a pause within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib

from openhqm import metrics
from openhqm.logging import get_logger
from openhqm.results.base import ResultStore
from openhqm.state import paused_queues

log = get_logger("openhqm.worker")

PAUSE_POLL_S = 1.0
# On SQLite `state_written` is also set by every other process's commit (the bell cannot say what
# changed): under load that would be a read per commit, so reads are at least this far apart.
MIN_REREAD_S = 0.2


class PauseWatch:
    def __init__(self, store: ResultStore, queue: str, poll_s: float = PAUSE_POLL_S) -> None:
        self.store = store
        self.queue = queue
        self.poll_s = poll_s
        self._paused = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    async def refresh(self) -> None:
        """Read the pause state now; raises when the store cannot be read."""
        paused = self.queue in await paused_queues(self.store)
        metrics.QUEUE_PAUSED.labels(self.queue).set(int(paused))
        if paused == self.paused:
            return
        log.info("queue paused: taking no new messages" if paused else "queue resumed", queue=self.queue)
        (self._paused if paused else self._running).set()
        (self._running if paused else self._paused).clear()

    async def until(self, paused: bool) -> None:
        await (self._paused if paused else self._running).wait()

    async def run(self) -> None:
        written = self.store.state_written
        while True:
            written.clear()  # before reading: a write during the read wakes the next round
            try:
                await self.refresh()
            except Exception as exc:  # the store is away: keep the last known state
                log.warning("reading the queue's pause state failed", queue=self.queue, error=str(exc))
            await asyncio.sleep(MIN_REREAD_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.poll_s - MIN_REREAD_S)):
                    await written.wait()
