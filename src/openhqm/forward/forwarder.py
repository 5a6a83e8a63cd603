"""Forwarder: the one object a worker process uses to call configured HTTP endpoints.

Create ONE per process and share it between worker tasks: each endpoint's connection pool,
circuit breaker, concurrency slots and rate bucket live in it. forward() may be cancelled at any
await (its slot, breaker trial and connection are released).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from openhqm.forward.endpoint import Endpoint
from openhqm.forward.models import ForwardRequest, ForwardResponse
from openhqm.forward.routing import Router
from openhqm.forward.settings import BatchSettings, ProxySettings
from openhqm.policies import RetryPolicy


class Forwarder:
    def __init__(self, settings: ProxySettings) -> None:
        self._router = Router(settings)
        self._endpoints = {name: Endpoint(name, s) for name, s in settings.all_endpoints().items()}

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return self._router.names

    async def start(self) -> None:
        """Open every endpoint's client; ConfigError when a TLS file cannot be loaded."""
        try:
            for endpoint in self._endpoints.values():
                await endpoint.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every connection pool; idempotent. Call after in-flight forwards have finished."""
        for endpoint in self._endpoints.values():
            await endpoint.aclose()

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def resolve(
        self,
        endpoint: str | None,
        *,
        method: str | None = None,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
        payload_json: Any = None,
    ) -> str:
        """The endpoint a request goes to: the one it names, else the first matching route, else
        the default. RequestRejected (400) names an unknown endpoint and lists the valid ones."""
        return self._router.resolve(
            endpoint, method=method, path=path, headers=headers, payload_json=payload_json
        )

    def circuit_state(self, endpoint: str) -> str:
        """`closed`, `open` or `half_open` (for the openhqm_circuit_state metric)."""
        return str(self._endpoint(endpoint).breaker.state)

    def batches(self) -> dict[str, BatchSettings]:
        """The endpoints whose requests are sent in batches, and how."""
        return {name: e.settings.batch for name, e in self._endpoints.items() if e.settings.batch is not None}

    def retry_policy(self, endpoint: str) -> RetryPolicy | None:
        """The endpoint's own retry policy, or None when it has no `retry` section (use the worker's)."""
        return self._endpoint(endpoint).retry_policy

    async def forward(self, req: ForwardRequest) -> ForwardResponse:
        """Call the endpoint. Any status the backend answers is returned, except the endpoint's
        retry.on_status, which raise ForwardError(retryable=True, retry_after_s=Retry-After).
        Raises UpstreamTimeout, UpstreamUnavailable, CircuitOpen, ResponseTooLarge, AuthFailed, or
        RequestRejected for an unknown endpoint, method or unsafe path."""
        return await self._endpoint(req.endpoint).send(req)

    def _endpoint(self, name: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise self._router.unknown(name) from None

    def __repr__(self) -> str:
        return f"Forwarder(endpoints={list(self.endpoint_names)})"
