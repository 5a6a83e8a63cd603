"""Commands that run OpenHQM or work on its store directly: serve, listener, worker, cleanup, backends."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from openhqm.app import load_app
from openhqm.cli.common import (
    ConcurrencyOpt,
    ConfigOpt,
    DataDirOpt,
    EngineOpt,
    HostOpt,
    PortOpt,
    ProcessesOpt,
    QueueTypeOpt,
    fail,
    settings_from,
)
from openhqm.config import Settings
from openhqm.errors import ConfigError, MissingDependency
from openhqm.logging import configure_logging, get_logger
from openhqm.tracing import configure_tracing

CONNECT_TIMEOUT_S = 30.0
log = get_logger("openhqm.listener")


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(f"port {port} on {host} is already in use; choose another with --port "
                     "or OPENHQM_SERVER__PORT")
            fail(f"cannot listen on {host}:{port}: {exc.strerror}")


def check_data_dir(settings: Settings) -> None:
    if "sqlite" not in (settings.queue.type, settings.results.type):
        return
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"data_dir {path} cannot be created: {exc.strerror}")
    if not os.access(path, os.W_OK):
        fail(f"data_dir {path} is not writable (set data_dir or OPENHQM_DATA_DIR)")


@dataclass(frozen=True)
class Reachability:
    """One part's connection attempt: `label` is None when the part could not even be created
    (an unknown type, a missing client library), and `error` then says why."""

    part: str
    label: str | None
    error: str | None

    @property
    def message(self) -> str:
        if self.error is None:
            return f"{self.label}: OK"
        return f"cannot connect to the {self.label}: {self.error}" if self.label else self.error


async def _reach(part: str, create: Callable[[], Any], label: Callable[[Any], str]) -> Reachability:
    try:
        connection = create()
    except (ConfigError, MissingDependency) as exc:
        return Reachability(part, None, str(exc))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await connection.connect()
    except (ConfigError, MissingDependency) as exc:
        return Reachability(part, None, str(exc))
    except TimeoutError:
        return Reachability(part, label(connection), f"no answer within {CONNECT_TIMEOUT_S:g} s")
    except Exception as exc:
        return Reachability(part, label(connection), str(exc) or type(exc).__name__)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return Reachability(part, label(connection), None)


def check_connections(settings: Settings) -> list[Reachability]:
    """Connect to the queue and the result store once each, and say how it went."""
    from openhqm.backends import create_backend
    from openhqm.results import create_store

    async def check() -> list[Reachability]:
        return [await _reach("queue", lambda: create_backend(settings), lambda b: f"queue {b.display_url}"),
                await _reach("result store", lambda: create_store(settings), lambda s: f"result store {s.name}")]

    return asyncio.run(check())


def preflight(settings: Settings) -> None:
    """Reach the queue and the result store once before serving, so an unreachable broker is one
    clear line (and a non-zero exit) rather than a traceback from inside the server's startup."""
    for reached in check_connections(settings):
        if reached.error is not None:
            fail(reached.message)


def _run_server(settings: Settings, run_workers: bool) -> None:
    import uvicorn

    from openhqm.http.app import create_app
    from openhqm.http.server_limits import server_options

    configure_logging(settings.logging)
    configure_tracing(settings.tracing, "openhqm")
    check_data_dir(settings)
    check_port(settings.server.host, settings.server.port)
    preflight(settings)
    try:
        if settings.server.engine == "granian":
            from openhqm.http.granian_server import require_granian

            require_granian()
        api = create_app(load_app(settings), run_workers=run_workers)
    except (ConfigError, MissingDependency) as exc:
        fail(str(exc))
    if settings.server.host not in ("127.0.0.1", "localhost", "::1"):
        auth = getattr(settings, "auth", None)
        if auth is None or not getattr(auth, "enabled", False):
            typer.secho(f"WARNING: serving on {settings.server.host} without client authentication; "
                        "anyone who can reach this port can submit and read requests", fg=typer.colors.YELLOW,
                        err=True)
    if settings.server.processes > 1:
        # The app above only proved the settings build one; each serving process builds its own.
        from openhqm.supervisor import serve_processes

        try:
            raise typer.Exit(serve_processes(settings, run_workers))
        except ConfigError as exc:
            fail(str(exc))
    if settings.server.engine == "granian":
        from openhqm.http import granian_server
        from openhqm.http.shared_port import base_url, bound_port, bound_socket

        sock = bound_socket(settings.server.host, settings.server.port, shared=False)
        url = base_url(settings.server.host, bound_port(sock))  # the port 0 became, for whoever reads the log
        granian_server.run(api, settings, sock, on_listening=lambda: log.info("serving", url=url, engine="granian"))
        return
    uvicorn.run(api, **server_options(settings))


def serve(config: ConfigOpt = None, host: HostOpt = None, port: PortOpt = None, queue_type: QueueTypeOpt = None,
          data_dir: DataDirOpt = None, concurrency: ConcurrencyOpt = None, processes: ProcessesOpt = None,
          engine: EngineOpt = None) -> None:
    """Listener and workers in one process (or in each of --processes): the quick start, on the
    embedded SQLite queue by default."""
    settings = settings_from(config, **{"server.host": host, "server.port": port, "queue.type": queue_type,
                                        "data_dir": data_dir, "worker.concurrency": concurrency,
                                        "server.processes": processes, "server.engine": engine})
    _run_server(settings, run_workers=True)


def listener(config: ConfigOpt = None, host: HostOpt = None, port: PortOpt = None,
             processes: ProcessesOpt = None, engine: EngineOpt = None) -> None:
    """The HTTP API only; workers run elsewhere (`openhqm worker`)."""
    settings = settings_from(config, **{"server.host": host, "server.port": port, "server.processes": processes,
                                        "server.engine": engine})
    _run_server(settings, run_workers=False)


def worker(config: ConfigOpt = None, concurrency: ConcurrencyOpt = None) -> None:
    """The worker pool only: consumes the request queue until SIGTERM, then drains."""
    from openhqm.worker_process import run_worker

    settings = settings_from(config, **{"worker.concurrency": concurrency})
    configure_logging(settings.logging)
    configure_tracing(settings.tracing, "openhqm-worker")
    check_data_dir(settings)
    if settings.worker.health_port:
        check_port(settings.server.host, settings.worker.health_port)
    preflight(settings)
    try:
        asyncio.run(run_worker(load_app(settings)))
    except (ConfigError, MissingDependency) as exc:
        fail(str(exc))


def cleanup(config: ConfigOpt = None,
            older_than: Annotated[float | None, typer.Option(
                "--older-than", min=0, help="seconds since completion, for every state; 0 removes every "
                "finished request")] = None) -> None:
    """Delete finished requests past results.ttl_s (and ttl_by_status), or older than --older-than s."""
    from openhqm.bridge import cleanup as cleanup_results
    from openhqm.results import create_store

    settings = settings_from(config)

    async def run() -> int:
        store = create_store(settings)
        await store.connect()
        try:
            return await cleanup_results(store, settings.results, time.time(), older_than)
        finally:
            await store.close()

    typer.echo(f"removed {asyncio.run(run())} finished request(s)")


def backends() -> None:
    """Print the queue backends and their capabilities (the table in docs/backends.md)."""
    from openhqm.backends.registry import capability_table

    typer.echo(capability_table())

