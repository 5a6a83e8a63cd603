"""The listener's view of flow limits: `GET /api/v1/flow`, the console's "Flow limits" panel and the
`openhqm_flow_waiting` / `openhqm_flow_in_flight` gauges, all from one snapshot of the ledger that
the workers share (flow/ledger.py). Every configured limit is listed, the endpoints' own
(`endpoint.<name>`) included; with none configured there is no ledger and the list is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openhqm import metrics
from openhqm.flow.ledger import Ledger, LimitState
from openhqm.flow.limiter import create_ledger
from openhqm.flow.limits import Limit, configured_limits, hashed_key
from openhqm.redact import MASKED_HEADERS
from openhqm.timefmt import rfc3339

if TYPE_CHECKING:
    from openhqm.config import Settings


@dataclass(frozen=True, slots=True)
class CoveredLimit:
    limit: Limit
    endpoint: str | None
    handler: str | None

    def shown_key(self, key: str) -> str:
        """A key value as the API shows it: hashed when it comes from a header the API masks (a
        limit per API token must not hand the tokens to every `read` client)."""
        source, _, name = (self.limit.key or "").partition(".")
        if source != "header" or name.lower() not in MASKED_HEADERS or key.startswith("sha256:"):
            return key
        return hashed_key(key)

    def json(self, state: LimitState) -> dict[str, Any]:
        limit = self.limit
        return {
            "name": limit.name, "endpoint": self.endpoint, "handler": self.handler, "key": limit.key,
            "rate_per_s": limit.rate_per_s, "burst": limit.burst if limit.rate_per_s is not None else None,
            "max_concurrency": limit.max_concurrency, "waiting": state.waiting, "in_flight": state.in_flight,
            "keys": state.keys,
            "reserved_until": rfc3339(state.reserved_until),
            "top_keys": [{"key": self.shown_key(load.key), "waiting": load.waiting, "in_flight": load.in_flight}
                         for load in state.top_keys],
        }


def covered_limits(settings: Settings) -> list[CoveredLimit]:
    """Every configured limit with its target, by name."""
    endpoints = settings.proxy.all_endpoints() if settings.proxy.enabled else {}
    by_endpoint, by_handler = configured_limits(settings.flow, endpoints)
    found = [CoveredLimit(limit, endpoint, None) for endpoint, limits in by_endpoint.items() for limit in limits]
    found += [CoveredLimit(limit, None, handler) for handler, limits in by_handler.items() for limit in limits]
    return sorted(found, key=lambda covered: covered.limit.name)


class FlowLimits:
    """`ledger`: the workers' own in `serve` (with the memory store, the only one that sees them);
    else the listener opens one on the result store's database."""

    def __init__(self, settings: Settings, ledger: Ledger | None = None) -> None:
        self.limits = covered_limits(settings)
        self._owned = ledger is None and bool(self.limits)
        self._ledger = ledger if ledger is not None or not self.limits else create_ledger(settings)

    async def connect(self) -> None:
        if self._owned and self._ledger is not None:
            await self._ledger.connect()

    async def close(self) -> None:
        if self._owned and self._ledger is not None:
            await self._ledger.close()

    async def states(self) -> list[LimitState]:
        """One snapshot of every limit, in `limits` order; the gauges are set from it."""
        if self._ledger is None:
            return []
        states = await self._ledger.snapshot([covered.limit.name for covered in self.limits])
        for state in states:
            metrics.child(metrics.FLOW_WAITING, state.limit).set(state.waiting)
            metrics.child(metrics.FLOW_IN_FLIGHT, state.limit).set(state.in_flight)
        return states

    async def view(self) -> dict[str, Any]:
        """`GET /api/v1/flow` (docs/flow-control.md)."""
        states = await self.states()
        return {"limits": [covered.json(state) for covered, state in zip(self.limits, states, strict=True)]}
