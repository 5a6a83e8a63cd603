"""Housekeeping off the request path: stats, metrics sampling, retention cleanup, and reconciliation
(requests left unfinished far longer than any attempt can take, with their message gone)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from openhqm import metrics
from openhqm.backends.base import Backend
from openhqm.config import ResultsSettings
from openhqm.constants import Status
from openhqm.listener.dead_letters import DeadLetters
from openhqm.listener.flow import FlowLimits
from openhqm.logging import get_logger
from openhqm.results.base import DeadLetterReason, DeadLetterRecord, RequestRecord, ResultStore
from openhqm.state import paused_queues
from openhqm.stats import RollingStats

log = get_logger("openhqm.listener")

# Beyond twice the longest attempt (worker.max_timeout_s), a request is reconciled once it has been
# still for this much longer too: more than any backend's lease (SQS visibility, Pub/Sub's 600 s
# deadline cap, NATS ack wait) takes to hand an abandoned message to another worker.
LEASE_MARGIN_S = 900.0
RECONCILE_BATCH = 100  # requests examined per round


@dataclass(frozen=True)
class Figures:
    requests: dict[str, int]
    depths: dict[str, int | None]
    oldest_unfinished_age_s: float | None
    paused: frozenset[str]

    def export(self, request_queue: str) -> None:
        metrics.QUEUE_PAUSED.labels(request_queue).set(int(request_queue in self.paused))
        for queue, depth in self.depths.items():
            if depth is not None:  # None: the broker cannot count (documented per backend)
                metrics.QUEUE_DEPTH.labels(queue).set(depth)
        metrics.QUEUE_OLDEST_AGE.labels(request_queue).set(self.oldest_unfinished_age_s or 0)
        for status in Status:
            metrics.RESULTS.labels(status.value).set(self.requests.get(status.value, 0))


class Housekeeping:
    def __init__(self, backend: Backend, store: ResultStore, queues: tuple[str, str],
                 results: ResultsSettings, dead: DeadLetters, max_timeout_s: float) -> None:
        self.backend = backend
        self.store = store
        self.queues = queues
        self.results = results
        self.dead = dead
        self.stale_after_s = 2 * max_timeout_s + LEASE_MARGIN_S
        self.rolling = RollingStats()
        self.flow: FlowLimits | None = None  # its gauges are sampled with the rest
        self._readings = 0  # figures() calls started, and the latest whose gauges were set
        self._exported = 0

    async def queue_depths(self) -> dict[str, int | None]:
        depths: dict[str, int | None] = {}
        for queue in self.queues:
            try:
                depths[queue] = await self.backend.depth(queue)
            except NotImplementedError:
                depths[queue] = None
        return depths

    async def oldest_unfinished_age_s(self) -> float | None:
        oldest = await self.store.oldest_unfinished()
        return round(time.time() - oldest, 3) if oldest else None

    async def figures(self) -> Figures:
        """The one reading of counts, depths and age: `stats()` answers with it and the gauges are set
        from it, so /api/v1/stats and /metrics never disagree about the same moment. A reading that
        ends after a later one has set the gauges (the sampler's, overtaken by a stats request) sets none."""
        self._readings += 1
        reading = self._readings
        figures = Figures(requests=await self.store.counts(), depths=await self.queue_depths(),
                          oldest_unfinished_age_s=await self.oldest_unfinished_age_s(),
                          paused=frozenset(await paused_queues(self.store)))
        if reading > self._exported:
            self._exported = reading
            figures.export(self.queues[0])
        return figures

    async def stats(self) -> dict[str, Any]:
        figures = await self.figures()
        return {
            "requests": figures.requests,
            "queues": {name: {"depth": depth} for name, depth in figures.depths.items()},
            "oldest_unfinished_age_s": figures.oldest_unfinished_age_s,
            "dead_letters": len(await self.store.list_dead_letters(10_000)),
            **self.rolling.summary(),
        }

    async def sample_metrics_forever(self, interval_s: float = 5.0) -> None:
        """Keep the gauges that need a query current, off the hot path (the flow limits' too: a
        worker sets them only when it decides, so they would stand still while the queue is idle)."""
        while True:
            try:
                await self.figures()
            except Exception as exc:
                log.warning("metrics sampling failed", error=str(exc))
            if self.flow is not None:
                try:
                    await self.flow.states()
                except Exception as exc:
                    log.warning("flow limit sampling failed", error=str(exc))
            await asyncio.sleep(interval_s)

    async def cleanup_forever(self) -> None:
        while True:
            await asyncio.sleep(self.results.cleanup_interval_s)
            try:
                removed = await cleanup(self.store, self.results, time.time())
                if removed:
                    log.info("expired results removed", count=removed)
                await self.reconcile(time.time())
            except Exception as exc:
                log.warning("cleanup failed", error=str(exc))

    async def reconcile(self, now: float) -> int:
        """Dead-letter (`reconciled_missing`) the requests whose message exists nowhere any more: still
        unfinished `stale_after_s` after anything last happened to them while the request queue holds
        nothing ready (a backlog could still hold them; a broker that cannot count is never judged).
        Returns how many."""
        request_queue = self.queues[0]
        stale = [record for record in await self.store.unfinished_submitted_before(
            now - self.stale_after_s, RECONCILE_BATCH)
            if last_activity(record) < now - self.stale_after_s
            and not record.children]  # a fan-out parent has no message of its own: its children end it
        if not stale or (await self.queue_depths()).get(request_queue) != 0:
            return 0
        found = 0
        for record in stale:
            found += await self.dead.fail(DeadLetterRecord(
                id=f"{record.correlation_id}.reconciled", correlation_id=record.correlation_id, queue=request_queue,
                reason=DeadLetterReason.RECONCILED_MISSING, attempts=record.attempts, last_error=record.error,
                dead_lettered_at=now, target=record.target,
                detail=f"{record.status} for {now - last_activity(record):.0f} s with its message in no queue "
                       f"(reconciled after {self.stale_after_s:g} s: 2 x worker.max_timeout_s + {LEASE_MARGIN_S:g} s)"))
        return found


def last_activity(record: RequestRecord) -> float:
    """When anything last happened to a request, or was due to (a retry's or a schedule's time)."""
    progress = record.progress.updated_at if record.progress else 0.0
    return max(record.updated_at, record.next_attempt_at or 0.0, record.not_before or 0.0, progress)


async def cleanup(store: ResultStore, results: ResultsSettings, now: float, older_than_s: float | None = None) -> int:
    """Remove finished requests past their retention (`results.ttl_s`, `results.ttl_by_status`), or
    past `older_than_s` for every state when given."""
    if older_than_s is not None:
        return await store.cleanup(now - older_than_s)
    return sum([await store.cleanup(now - ttl_s, statuses) for ttl_s, statuses in results.retention()])
