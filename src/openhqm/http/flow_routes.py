"""GET /api/v1/flow (read): every flow limit's state across the processes sharing the store
(listener/flow.py holds the logic; docs/flow-control.md the shape)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from openhqm.bridge import Bridge
from openhqm.http.openapi import problems

flow_router = APIRouter(prefix="/api/v1/flow", tags=["flow"])


class KeyLoadView(BaseModel):
    key: str = Field(description="a key value as it names its bucket (over 64 characters, or from a masked "
                                 "header: `sha256:` and its hash)")
    waiting: int
    in_flight: int


class FlowLimitView(BaseModel):
    name: str = Field(description="`flow.limits.<name>`, or `endpoint.<endpoint>` for an endpoint's own limit")
    endpoint: str | None
    handler: str | None
    key: str | None = Field(description="what splits it into buckets (`metadata.<f>`, `header.<n>`, `payload.<p>`)")
    rate_per_s: float | None
    burst: int | None
    max_concurrency: int | None
    waiting: int = Field(description="requests waiting on it now, all processes")
    in_flight: int = Field(description="slots held now, over all its buckets")
    keys: int = Field(description="buckets with a reservation ahead, a slot held or a request waiting")
    reserved_until: str | None = Field(description="RFC 3339: the latest time a rate token is reserved for, "
                                                   "over its buckets; null when none is ahead of now")
    top_keys: list[KeyLoadView] = Field(description="keyed limits: up to 10 buckets, most waiting first")


class FlowView(BaseModel):
    limits: list[FlowLimitView]


@flow_router.get("", response_model=None, responses={200: {"model": FlowView}, **problems(503)})
async def flow_limits(request: Request) -> dict[str, Any]:
    """Each configured flow limit (the endpoints' own included, by name) with its state now across
    every process sharing the result store; an empty list when none is configured."""
    bridge: Bridge = request.app.state.bridge
    return await bridge.flow.view()
