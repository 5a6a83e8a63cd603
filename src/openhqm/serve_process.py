"""One serving process of `serve --processes N` (`python -m openhqm.serve_process`, started by
supervisor.py): the whole `openhqm serve` (or `listener`) runtime, on the port its supervisor reserved.

Its Order arrives pickled on stdin from the parent that started it. Once its server (uvicorn, or
granian with `server.engine: granian`) listens it writes one byte to its ready pipe, and it keeps the
pipe open until it exits, so the parent learns both from one descriptor. It asks Linux for SIGTERM
should the parent die (a killed supervisor leaves no process serving unsupervised) and, like
`openhqm serve`, drains on SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass

import uvicorn

from openhqm.config import Settings
from openhqm.errors import ConfigError, MissingDependency
from openhqm.logging import configure_logging, get_logger
from openhqm.tracing import configure_tracing

log = get_logger("openhqm.supervisor")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Order:
    """What a serving process needs from its supervisor."""

    settings: Settings
    run_workers: bool
    port: int  # the reserved port (a real one even when server.port is 0)
    index: int  # which of the `count` slots this process fills
    count: int
    parent_pid: int
    ready_fd: int  # the write end of the ready pipe, passed down under this number


class ServingProcess(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, order: Order) -> None:
        super().__init__(config)
        self.order = order

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            announce_ready(self.order)


def announce_ready(order: Order) -> None:
    """One byte on the ready pipe: this process listens."""
    log.info("serving process ready", process=order.index + 1, of=order.count, pid=os.getpid())
    with contextlib.suppress(OSError):  # the parent is gone: PDEATHSIG is on its way
        os.write(order.ready_fd, b"r")


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM (a drain) to this process when its parent dies, on Linux; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def serve(order: Order) -> None:
    from openhqm.app import load_app
    from openhqm.http.app import create_app
    from openhqm.http.server_limits import server_options
    from openhqm.http.shared_port import bound_socket

    settings = order.settings
    configure_logging(settings.logging)
    configure_tracing(settings.tracing, "openhqm")
    api = create_app(load_app(settings), run_workers=order.run_workers)
    sock = bound_socket(settings.server.host, order.port, shared=True)
    if settings.server.engine == "granian":
        from openhqm.http import granian_server

        granian_server.run(api, settings, sock, on_listening=lambda: announce_ready(order))
        return
    config = uvicorn.Config(api, **{**server_options(settings), "port": order.port})
    ServingProcess(config, order).run(sockets=[sock])


def main() -> None:
    order: Order = pickle.load(sys.stdin.buffer)  # from the parent that started this process
    os.set_inheritable(order.ready_fd, False)  # its EOF must mean this process exited, not a grandchild
    die_with_parent(order.parent_pid)
    try:
        serve(order)
    except (ConfigError, MissingDependency) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
