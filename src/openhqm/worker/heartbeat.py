"""Each worker process's heartbeat in the result store (`GET /api/v1/workers`): who it is, how busy,
and when it was last heard from. Removed on a clean shutdown; a killed process's entry goes stale
(shown as gone after three intervals, dropped after an hour, see state.py)."""

from __future__ import annotations

import asyncio
import time

from openhqm.logging import get_logger
from openhqm.results.base import ResultStore
from openhqm.state import Heartbeat, put_heartbeat
from openhqm.worker.identity import this_process
from openhqm.worker.pool import WorkerPool

log = get_logger("openhqm.worker")

REMOVE_TIMEOUT_S = 2.0  # a store that is away must not hold up shutdown


class Heartbeats:
    def __init__(self, store: ResultStore, pool: WorkerPool, interval_s: float) -> None:
        self.store = store
        self.pool = pool
        self.interval_s = interval_s
        self.identity = this_process()
        self._task: asyncio.Task[None] | None = None

    def beat(self) -> Heartbeat:
        me = self.identity
        return Heartbeat(worker_id=me.worker_id, host=me.host, pid=me.pid, started_at=me.started_at,
                         concurrency=self.pool.concurrency, in_flight=self.pool.in_flight,
                         last_seen_at=time.time(), heartbeat_interval_s=self.interval_s, queue=self.pool.queue)

    async def _run(self) -> None:
        while True:
            try:
                await put_heartbeat(self.store, self.beat(), self.identity.worker_id)
            except Exception as exc:
                log.warning("writing the worker's heartbeat failed", error=str(exc))
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="openhqm-heartbeat")

    async def stop(self) -> None:
        """Stop beating and remove this worker's entry: it left cleanly, it is not gone."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        try:
            async with asyncio.timeout(REMOVE_TIMEOUT_S):
                await put_heartbeat(self.store, None, self.identity.worker_id)
        except Exception as exc:
            log.warning("removing the worker's heartbeat failed", error=str(exc))
