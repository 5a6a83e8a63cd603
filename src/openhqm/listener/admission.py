"""`queue.max_pending`: refuse a submit (503, nothing written) while the request queue is full.

The queue's depth (the backend's count of waiting messages: ready and delayed, not those being
processed) is sampled at most every SAMPLE_INTERVAL_S, on the first submit after the interval and
shared by every submit meanwhile, so the hot path costs no broker round trip. This process's own
admissions since the sample are added to it. Tolerance, documented in docs/operations.md:
- over: other listener replicas' submits since the sample are not seen, so up to one interval
  (plus the sample's round trip) of their submits can pass the limit;
- under: what workers took since the sample is not seen, and this process's admissions count as
  waiting until the next sample, so a submit can be refused up to one interval early. A submit
  that would be refused waits for a sample in flight; none is ever refused on a sample older than
  one interval, so a queue that workers drained is not refused on stale figures.
The store's counts were the other candidate: they group every retained request by status, a cost
that grows with retention, while a depth is one cheap count per broker.
"""

from __future__ import annotations

import asyncio
import time

from openhqm.backends.base import Backend
from openhqm.errors import ConfigError, QueueFull
from openhqm.logging import get_logger

log = get_logger("openhqm.listener")

SAMPLE_INTERVAL_S = 0.1


class PendingLimit:
    def __init__(self, backend: Backend, queue: str, max_pending: int) -> None:
        if not backend.capabilities.depth:
            raise ConfigError(f"queue.max_pending needs a queue that can count its waiting messages; "
                              f"queue.type {backend.name!r} cannot (see docs/backends.md)")
        self.backend = backend
        self.queue = queue
        self.max_pending = max_pending
        self._depth: int | None = None  # at the last sample; None until one succeeded
        self._admitted = 0  # by this process, ever
        self._admitted_at_sample = 0
        self._sampled_at = float("-inf")
        self._sampling: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int | None:
        """The estimate a submit is judged by: the last depth plus what this process admitted since."""
        return None if self._depth is None else self._depth + self._admitted - self._admitted_at_sample

    async def admit(self) -> None:
        """Count one submit in, or raise QueueFull when the queue holds max_pending already."""
        if time.monotonic() - self._sampled_at >= SAMPLE_INTERVAL_S and self._sampling is None:
            self._sampled_at = time.monotonic()
            self._sampling = asyncio.create_task(self._sample(), name="openhqm-pending-sample")
        if self._sampling is not None and (self.pending is None or self.pending >= self.max_pending):
            await asyncio.shield(self._sampling)
        pending = self.pending
        if pending is not None and pending >= self.max_pending:
            raise QueueFull(f"{pending} requests wait in queue {self.queue!r}, queue.max_pending is "
                            f"{self.max_pending}; retry later")
        self._admitted += 1

    async def _sample(self) -> None:
        admitted = self._admitted  # those admitted while depth() runs may be counted twice: the safe side
        try:
            self._depth = await self.backend.depth(self.queue)
            self._admitted_at_sample = admitted
        except Exception as exc:  # the publish that follows reports an outage; never refuse on old figures
            self._depth = None
            log.debug("queue depth unavailable for queue.max_pending", queue=self.queue, error=str(exc))
        finally:
            self._sampling = None
