"""`server.engine: granian`: the app behind granian's Rust HTTP server, embedded in this process's loop.

Why: with uvicorn, parsing requests and writing answers are Python work on the one event loop that
also runs the bridge; granian does that work in Rust (docs/benchmarks.md: a plain GET of a result
46-60 % faster, the waiting submit 8-12 %; behind a 50 ms backend a gain on one machine, none on a
slower one, where the bridge's own Python work is what the returning answers queue behind).

The same guarantees as `openhqm serve` on uvicorn (http/server_limits.py, supervisor.py):
- the runtime starts before the port listens and drains after the server stopped; SIGTERM or SIGINT
  stops accepting, lets the requests being served finish (up to `worker.shutdown_timeout_s` + 5 s),
  then drains the workers; a second signal exits at once (unsettled messages return after their lease);
- the socket is this module's: bound (port 0 reads back; `server.processes` shares it through
  SO_REUSEPORT), listened on once the runtime is up, and handed to granian by descriptor (which
  granian then closes);
- `server.backlog`; `server.header_timeout_s` (hyper's header read timeout, which also closes a
  keep-alive connection idle that long); `server.limit_concurrency` (granian's backpressure: requests
  beyond it wait for a free slot instead of answering 503).
What differs: hyper arms its header deadline at a connection's first byte, so a connection that never
sends one stays open (put a proxy in front where clients are untrusted); `timeout_keep_alive_s` and
`h11_max_incomplete_event_size` are uvicorn's and do not apply.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from openhqm.config import Settings
from openhqm.errors import MissingDependency
from openhqm.logging import get_logger
from openhqm.signals import drain_on_signals

log = get_logger("openhqm.listener")


def require_granian() -> Any:
    """granian's embedded server module, or MissingDependency naming the extra."""
    try:
        from granian.server import embed
    except ImportError as exc:
        raise MissingDependency("server.engine 'granian' needs granian: pip install 'openhqm[granian]'") from exc
    return embed


def embedded_server(api: FastAPI, settings: Settings, sock: socket.socket) -> Any:
    """granian's embedded server for `api` on `sock` (listening), without its lifespan (ours runs it).
    granian owns the descriptor from then on (it closes it), so `sock` is detached from it."""
    embed = require_granian()
    from granian._granian import SocketHolder
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    class OnOurSocket(embed.Server):  # type: ignore[misc,name-defined]
        def _init_shared_socket(self) -> None:  # granian's one internal we replace: where its socket comes from
            self._ssp = None
            self._shd = SocketHolder(sock.detach(), False, settings.server.backlog)  # type: ignore[call-arg]

    server = settings.server
    return OnOurSocket(
        api, interface=Interfaces.ASGINL, http=HTTPModes.http1, websockets=False, backlog=server.backlog,
        backpressure=server.limit_concurrency, log_enabled=False,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(server.header_timeout_s * 1000))))


async def serve(api: FastAPI, settings: Settings, sock: socket.socket,
                on_listening: Callable[[], None] = lambda: None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or until `stop` is set, when given: then no signal is handled),
    then stop accepting, finish what is being served and drain."""
    from sse_starlette.sse import AppStatus

    if stop is None:
        stop = drain_on_signals()
    async with api.router.lifespan_context(api):
        sock.listen(settings.server.backlog)
        server = embedded_server(api, settings, sock)
        serving = asyncio.create_task(server.serve())
        on_listening()
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait((stopping, serving), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        server.stop()
        AppStatus.should_exit = True  # event streams end, as sse-starlette's uvicorn hook makes them
        grace_s = settings.worker.shutdown_timeout_s + 5
        try:
            await asyncio.wait_for(serving, grace_s)
        except TimeoutError:
            log.warning("requests still being served after the grace period were cut", grace_s=grace_s)
        finally:
            AppStatus.should_exit = False  # process-global: a later server in this process starts clean
    log.info("server stopped", engine="granian")


def run(api: FastAPI, settings: Settings, sock: socket.socket,
        on_listening: Callable[[], None] = lambda: None) -> None:
    """`serve` on uvloop when installed (as uvicorn picks it), else asyncio's loop."""
    try:
        import uvloop
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(api, settings, sock, on_listening))
