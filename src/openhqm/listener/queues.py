"""The operator console's queue figures: the overview (`GET /api/v1/queues`), pause and resume, the
per-minute series of finished requests, and the workers' heartbeats.

The counts come from `Housekeeping.figures()`, the same reading /api/v1/stats and /metrics use. The
queues are those workers take from: the request queue (the response queue is the listener's own
channel and is not paused). A figure the broker or the store cannot give is null and named in
`not_reported`, never a wrong zero.
"""

from __future__ import annotations

import time
from typing import Any

from openhqm.backends.base import Backend
from openhqm.constants import Status
from openhqm.errors import NotFound, RequestRejected
from openhqm.listener.housekeeping import Housekeeping
from openhqm.results.base import ResultStore
from openhqm.results.series import FIGURES, SERIES_MAX_MINUTES, FinishedMinute, minute_starts, window
from openhqm.state import heartbeats, set_paused
from openhqm.timefmt import rfc3339

DEAD_LETTERS_COUNTED = 10_000  # as /api/v1/stats: more than this many show as this many
# A minute's figures are final once it is this long over (a reply's completed_at is stamped by the
# worker a moment before the store sees it); later readings take them from memory, not the store.
SETTLED_AFTER_S = 10.0


class Queues:
    def __init__(self, backend: Backend, store: ResultStore, housekeeping: Housekeeping, request_queue: str) -> None:
        self.backend = backend
        self.store = store
        self.housekeeping = housekeeping
        self.names = (request_queue,)
        self._settled: dict[float, FinishedMinute] = {}  # minute start -> its final figures

    def known(self, queue: str) -> str:
        if queue not in self.names:
            raise NotFound(f"unknown queue {queue!r}; this deployment's queues: {', '.join(self.names)}")
        return queue

    async def overview(self) -> list[dict[str, Any]]:
        figures = await self.housekeeping.figures()
        dead = await self.store.list_dead_letters(DEAD_LETTERS_COUNTED)
        items = []
        for name in self.names:
            counts = figures.requests
            not_reported = []
            depth = figures.depths.get(name)
            if depth is None:
                not_reported.append("depth")
            if not self.store.tells_oldest_unfinished:
                not_reported.append("oldest_pending_age_s")
            items.append({
                "name": name, "paused": name in figures.paused,
                "pending": counts.get(Status.PENDING, 0) + counts.get(Status.RETRY, 0),
                "scheduled": counts.get(Status.SCHEDULED, 0), "processing": counts.get(Status.PROCESSING, 0),
                "dead_letters": sum(1 for entry in dead if entry.queue == name),
                "oldest_pending_age_s": figures.oldest_unfinished_age_s,
                "backend": self.backend.name, "depth": depth, "not_reported": not_reported,
            })
        return items

    async def item(self, queue: str) -> dict[str, Any]:
        return next(item for item in await self.overview() if item["name"] == queue)

    async def set_paused(self, queue: str, paused: bool) -> dict[str, Any]:
        await set_paused(self.store, self.known(queue), paused)
        return await self.item(queue)

    async def series(self, queue: str, minutes: int) -> dict[str, Any]:
        self.known(queue)
        if not 1 <= minutes <= SERIES_MAX_MINUTES:
            raise RequestRejected(f"minutes must be between 1 and {SERIES_MAX_MINUTES}; got {minutes}", status=422)
        now = time.time()
        since, until = window(minutes, now)
        found = await self._finished_series(since, until, now)
        if found is None:
            return {"minutes": [{"at": rfc3339(since + 60 * i), **dict.fromkeys(FIGURES)} for i in range(minutes)],
                    "not_reported": list(FIGURES)}
        return {"minutes": [{"at": rfc3339(m.at), "completed": m.completed, "failed": m.failed,
                             "p50_ms": m.p50_ms, "p95_ms": m.p95_ms, "p99_ms": m.p99_ms} for m in found],
                "not_reported": []}

    async def _finished_series(self, since: float, until: float, now: float) -> list[FinishedMinute] | None:
        """The store's series, reading only the minutes not yet settled: an open console asks every
        2 s, and the past minutes of its 15 do not change."""
        starts = minute_starts(since, until)
        unknown = [start for start in starts if start not in self._settled]
        fresh = await self.store.finished_series(unknown[0], until) if unknown else []
        if fresh is None:
            return None
        for figures in fresh:
            if figures.at + 60.0 + SETTLED_AFTER_S <= now:
                self._settled[figures.at] = figures
        for start in [start for start in self._settled if start < now - 60.0 * (SERIES_MAX_MINUTES + 1)]:
            del self._settled[start]
        by_start = {figures.at: figures for figures in fresh}
        return [self._settled.get(start) or by_start[start] for start in starts]

    async def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"worker_id": beat.worker_id, "host": beat.host, "pid": beat.pid,
                 "started_at": rfc3339(beat.started_at), "concurrency": beat.concurrency,
                 "in_flight": beat.in_flight, "last_seen_at": rfc3339(beat.last_seen_at),
                 "alive": beat.alive(now), "queue": beat.queue, "heartbeat_interval_s": beat.heartbeat_interval_s}
                for beat in await heartbeats(self.store, now)]
