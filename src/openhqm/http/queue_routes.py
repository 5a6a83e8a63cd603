"""/api/v1/queues (overview, read; pause and resume, admin; per-minute series, read) and
/api/v1/workers (heartbeats, read): the operator console's view of queues and workers
(listener/queues.py holds the logic)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from openhqm.bridge import Bridge
from openhqm.http.openapi import ERRORS
from openhqm.listener.queues import Queues
from openhqm.results.series import SERIES_MAX_MINUTES

queue_router = APIRouter(prefix="/api/v1/queues", tags=["queues"])
worker_router = APIRouter(prefix="/api/v1/workers", tags=["queues"])


def _queues(request: Request) -> Queues:
    bridge: Bridge = request.app.state.bridge
    return bridge.queues


@queue_router.get("")
async def list_queues(request: Request) -> list[dict[str, Any]]:
    """Each queue: paused, requests pending / scheduled / processing, dead letters, the oldest
    unfinished request's age; figures this broker or store cannot give are null and in not_reported."""
    return await _queues(request).overview()


@queue_router.post("/{queue}/pause", responses=ERRORS)
async def pause_queue(queue: str, request: Request) -> dict[str, Any]:
    """Workers (every process sharing the store) take nothing more from the queue; submits still
    answer 202, running jobs finish, waiting requests wait. Kept in the store across restarts."""
    return await _queues(request).set_paused(queue, True)


@queue_router.post("/{queue}/resume", responses=ERRORS)
async def resume_queue(queue: str, request: Request) -> dict[str, Any]:
    return await _queues(request).set_paused(queue, False)


@queue_router.get("/{queue}/series", responses=ERRORS)
async def queue_series(queue: str, request: Request,
                       minutes: int = Query(15, ge=1, le=SERIES_MAX_MINUTES,
                                            description="how many minutes, the current one included")
                       ) -> dict[str, Any]:
    """Per minute: requests COMPLETED and FAILED, and the p50/p95/p99 of their end-to-end latency
    (completed_at - submitted_at), from the result store (every replica's)."""
    return await _queues(request).series(queue, minutes)


@worker_router.get("")
async def list_workers(request: Request) -> list[dict[str, Any]]:
    """Every worker process heard from within the hour; `alive` false after three silent heartbeats."""
    return await _queues(request).workers()
