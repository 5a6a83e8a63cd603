"""Which work a request gets: `metadata.endpoint` (proxy mode) or `metadata.handler`; with neither,
the proxy's routing rules and default endpoint when proxy mode is on, else `worker.default_handler`.
Unknown names are refused at submit (400 listing the valid ones), never discovered by a worker later.
"""

from __future__ import annotations

from typing import Any, Protocol

from openhqm.errors import RequestRejected


class Handlers(Protocol):
    """The registered handlers (openhqm.worker.handlers.HandlerRegistry): `get` raises
    RequestRejected (400) listing the valid names for an unknown one."""

    def get(self, name: str) -> object: ...


class EndpointResolver(Protocol):
    def resolve(self, endpoint: str | None, *, method: str, path: str, headers: dict[str, str],
                payload_json: Any) -> str: ...


class Routing:
    def __init__(self, handlers: Handlers, default_handler: str,
                 endpoints: EndpointResolver | None = None) -> None:
        self.handlers = handlers
        self.default_handler = default_handler
        self.endpoints = endpoints

    def choose(self, endpoint: str | None, handler: str | None, *, payload: Any = None,
               headers: dict[str, str] | None = None, method: str = "POST", path: str = "/"
               ) -> tuple[str | None, str | None]:
        """(endpoint, handler): exactly one is set."""
        if endpoint is not None and handler is not None:
            raise RequestRejected("metadata.endpoint and metadata.handler exclude each other")
        if handler is not None:
            self.handlers.get(handler)  # raises 400 listing the valid handlers
            return None, handler
        if self.endpoints is not None:
            return self.endpoints.resolve(endpoint, method=method, path=path, headers=headers or {},
                                          payload_json=payload), None
        if endpoint is not None:
            raise RequestRejected(f"metadata.endpoint {endpoint!r} needs proxy mode (proxy.enabled: true)")
        self.handlers.get(self.default_handler)
        return None, self.default_handler
