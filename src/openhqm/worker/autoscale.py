"""Grow the pool while there is backlog and every slot is busy; shrink it back when quiet.

Doubling and halving keep the reaction quick without oscillating: a pool grows within seconds of a
burst and returns to `worker.min_concurrency` once the queue has stayed empty for `shrink_after_s`.
"""

from __future__ import annotations

import asyncio

from openhqm.logging import get_logger
from openhqm.worker.pool import WorkerPool

log = get_logger("openhqm.worker")


class Autoscaler:
    def __init__(self, pool: WorkerPool, min_concurrency: int, max_concurrency: int,
                 interval_s: float = 1.0, shrink_after_s: float = 5.0) -> None:
        self.pool = pool
        self.min = min_concurrency
        self.max = max(max_concurrency, min_concurrency)
        self.interval_s = interval_s
        self.shrink_after_s = shrink_after_s
        self._quiet_s = 0.0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.step(await self._backlog())
            except Exception as exc:
                log.warning("autoscaling check failed", error=str(exc))

    async def _backlog(self) -> int | None:
        try:
            return await self.pool.backend.depth(self.pool.queue)
        except NotImplementedError:
            return None  # the broker cannot count: judge by busy slots alone

    def step(self, backlog: int | None) -> None:
        pool = self.pool
        saturated = pool.in_flight >= pool.concurrency
        if saturated and (backlog is None or backlog > 0) and pool.concurrency < self.max:
            self._quiet_s = 0.0
            self._resize(min(self.max, pool.concurrency * 2), backlog)
            return
        if (backlog == 0 or backlog is None) and pool.in_flight <= pool.concurrency // 2:
            self._quiet_s += self.interval_s
            if self._quiet_s >= self.shrink_after_s and pool.concurrency > self.min:
                self._quiet_s = 0.0
                self._resize(max(self.min, pool.concurrency // 2), backlog)
        else:
            self._quiet_s = 0.0

    def _resize(self, concurrency: int, backlog: int | None) -> None:
        log.info("pool resized", concurrency=concurrency, previous=self.pool.concurrency, backlog=backlog)
        self.pool.resize(concurrency)
