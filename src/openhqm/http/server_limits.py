"""The HTTP server's limits (`server.*`), as uvicorn options, so slow or idle clients cannot hold
the bridge's connections and descriptors without bound.

uvicorn closes a connection that stays idle `timeout_keep_alive` seconds after a response, but
arms nothing before the first request, and any byte received disarms it: a client that connects and
sends nothing, or sends its request head one byte a second (slowloris), holds its connection for
ever. The protocol below adds one deadline: a request head must be complete within
`server.header_timeout_s` of the connection opening or of the previous response, else the
connection is closed. A request being served is never cut (a Prefer: wait may take a minute).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from openhqm.config import Settings
from openhqm.http.server_settings import ServerSettings

_Mixin: Any = object  # the mixin calls uvicorn's protocol methods, which `object` does not declare


class HeadDeadline(_Mixin):  # type: ignore[misc]
    """Mixed into uvicorn's HTTP protocol (httptools or h11: the hooks below are common to both)."""

    header_timeout_s: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm_head_deadline()  # the transport now belongs to a WebSocket protocol
        super().handle_websocket_upgrade(*args)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving and not self.transport.is_closing():
            self.transport.close()


def http_protocol(header_timeout_s: float, base: type[asyncio.Protocol] = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11, as uvicorn picks) with the deadline."""
    return type("OpenHQMHTTPProtocol", (HeadDeadline, base), {"header_timeout_s": header_timeout_s})


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """What `uvicorn.Config` takes from `server.*` (cli/server.py; tests serve with the same)."""
    return {"http": http_protocol(server.header_timeout_s), "limit_concurrency": server.limit_concurrency,
            "backlog": server.backlog, "timeout_keep_alive": server.timeout_keep_alive_s,
            "h11_max_incomplete_event_size": server.h11_max_incomplete_event_size}


def server_options(settings: Settings) -> dict[str, Any]:
    """Everything uvicorn takes from the settings, for `openhqm serve` and `listener`'s one process or
    each of `server.processes` (which then passes its own socket)."""
    return {"host": settings.server.host, "port": settings.server.port, "log_config": None, "access_log": False,
            "timeout_graceful_shutdown": int(settings.worker.shutdown_timeout_s) + 5,
            **uvicorn_options(settings.server)}
