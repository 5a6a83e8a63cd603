"""/api/v1/schedules: list, create or replace, delete, fire now, pause and resume (admin scope).

A schedule from the configuration can be paused, resumed and fired, not replaced or deleted here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from pydantic import ValidationError

from openhqm.bridge import Bridge
from openhqm.config import _problems
from openhqm.errors import RequestRejected
from openhqm.http.openapi import ERRORS
from openhqm.listener.scheduler import Scheduler
from openhqm.schedules import ScheduleSettings

schedule_router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])


def _scheduler(request: Request) -> Scheduler:
    bridge: Bridge = request.app.state.bridge
    return bridge.scheduler


@schedule_router.get("")
async def list_schedules(request: Request) -> list[dict[str, Any]]:
    return [state.view() for state in sorted(_scheduler(request).states.values(), key=lambda s: s.name)]


@schedule_router.get("/{name}", responses=ERRORS)
async def get_schedule(name: str, request: Request) -> dict[str, Any]:
    return _scheduler(request).get(name).view()


@schedule_router.put("/{name}", responses=ERRORS)
async def put_schedule(name: str, request: Request,
                       body: dict[str, Any] = Body(description="as `schedules.<name>` in the configuration")
                       ) -> dict[str, Any]:
    try:
        settings = ScheduleSettings.model_validate(body)
    except ValidationError as exc:
        raise RequestRejected(_problems(exc, body, ("schedules", name)), status=422) from None
    return (await _scheduler(request).put(name, settings)).view()


@schedule_router.delete("/{name}", responses=ERRORS)
async def delete_schedule(name: str, request: Request) -> dict[str, Any]:
    return (await _scheduler(request).remove(name)).view()


@schedule_router.post("/{name}/run", status_code=202, responses=ERRORS)
async def run_schedule(name: str, request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    correlation_id = await scheduler.run_now(name)
    return {"correlation_id": correlation_id, "schedule": scheduler.get(name).view()}


@schedule_router.post("/{name}/pause", responses=ERRORS)
async def pause_schedule(name: str, request: Request) -> dict[str, Any]:
    return (await _scheduler(request).set_paused(name, True)).view()


@schedule_router.post("/{name}/resume", responses=ERRORS)
async def resume_schedule(name: str, request: Request) -> dict[str, Any]:
    return (await _scheduler(request).set_paused(name, False)).view()
