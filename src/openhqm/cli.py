"""The `openhqm` command: serve, listener, worker, and client commands that talk to a listener."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from openhqm.app import OpenHQM
from openhqm.config import Settings, load_settings, redacted
from openhqm.errors import ConfigError, MissingDependency
from openhqm.logging import configure_logging
from openhqm.tracing import configure_tracing

cli = typer.Typer(help="OpenHQM: a durable bridge between HTTP and message queues.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
dlq_cli = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)
config_cli = typer.Typer(help="Configuration.", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(config_cli, name="config")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file (or OPENHQM_CONFIG)")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="OPENHQM_URL", help="listener base URL")]
DEFAULT_URL = "http://127.0.0.1:8000"


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    try:
        return load_settings(config, nested)
    except ConfigError as exc:
        fail(str(exc))
        raise


def load_app(settings: Settings) -> OpenHQM:
    """The OpenHQM app named by `worker.app` (module:attribute), or a plain one with `echo`."""
    if not settings.worker.app:
        return OpenHQM(settings)
    module_name, _, attr = settings.worker.app.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        app = getattr(module, attr or "app")
    except (ImportError, AttributeError) as exc:
        fail(f"worker.app {settings.worker.app!r} cannot be loaded: {exc}")
        raise
    if not isinstance(app, OpenHQM):
        fail(f"worker.app {settings.worker.app!r} is a {type(app).__name__}, not an OpenHQM app")
    app.settings = settings
    loaded: OpenHQM = app
    return loaded


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


def preflight(settings: Settings) -> None:
    """Reach the queue and the result store once before serving, so an unreachable broker is one
    clear line (and a non-zero exit) rather than a traceback from inside the server's startup."""
    from openhqm.backends import create_backend
    from openhqm.results import create_store

    async def check() -> None:
        backend, store = create_backend(settings), create_store(settings)
        try:
            async with asyncio.timeout(30):
                for part, what in ((backend, f"queue {backend.display_url}"), (store, f"result store {store.name}")):
                    try:
                        await part.connect()
                    except (ConfigError, MissingDependency):
                        raise
                    except Exception as exc:
                        fail(f"cannot connect to the {what}: {exc}")
        finally:
            for part in (store, backend):
                with contextlib.suppress(Exception):
                    await part.close()

    try:
        asyncio.run(check())
    except TimeoutError:
        fail("the queue or the result store did not answer within 30 s")
    except (ConfigError, MissingDependency) as exc:
        fail(str(exc))


def _run_server(settings: Settings, run_workers: bool) -> None:
    import uvicorn

    from openhqm.http.app import create_app

    configure_logging(settings.logging)
    configure_tracing(settings.tracing, "openhqm")
    check_data_dir(settings)
    check_port(settings.server.host, settings.server.port)
    preflight(settings)
    app = load_app(settings)
    try:
        api = create_app(app, run_workers=run_workers)
    except (ConfigError, MissingDependency) as exc:
        fail(str(exc))
    if settings.server.host not in ("127.0.0.1", "localhost", "::1"):
        auth = getattr(settings, "auth", None)
        if auth is None or not getattr(auth, "enabled", False):
            typer.secho(f"WARNING: serving on {settings.server.host} without client authentication; "
                        "anyone who can reach this port can submit and read requests", fg=typer.colors.YELLOW,
                        err=True)
    uvicorn.run(api, host=settings.server.host, port=settings.server.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=int(settings.worker.shutdown_timeout_s) + 5)


@cli.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="server.host")] = None,
          port: Annotated[int | None, typer.Option(help="server.port")] = None,
          queue_type: Annotated[str | None, typer.Option("--queue-type", help="queue.type")] = None,
          data_dir: Annotated[Path | None, typer.Option(help="data_dir")] = None,
          concurrency: Annotated[int | None, typer.Option(help="worker.concurrency")] = None) -> None:
    """Listener and workers in one process: the quick start, on the embedded SQLite queue by default."""
    settings = settings_from(config, **{"server.host": host, "server.port": port, "queue.type": queue_type,
                                        "data_dir": data_dir, "worker.concurrency": concurrency})
    _run_server(settings, run_workers=True)


@cli.command()
def listener(config: ConfigOpt = None,
             host: Annotated[str | None, typer.Option(help="server.host")] = None,
             port: Annotated[int | None, typer.Option(help="server.port")] = None) -> None:
    """The HTTP API only; workers run elsewhere (`openhqm worker`)."""
    settings = settings_from(config, **{"server.host": host, "server.port": port})
    _run_server(settings, run_workers=False)


@cli.command()
def worker(config: ConfigOpt = None,
           concurrency: Annotated[int | None, typer.Option(help="worker.concurrency")] = None) -> None:
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


def _client(url: str) -> httpx.Client:
    api_key = os.environ.get("OPENHQM_API_KEY")  # read from the environment only: never in shell history
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, read=None), headers=headers)


def _call(method: str, url: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        with _client(url) as client:
            return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the listener at {url}: {exc}")
        raise


def _print(response: httpx.Response) -> None:
    try:
        typer.echo(json.dumps(response.json(), indent=2))
    except ValueError:
        typer.echo(response.text)
    if response.status_code >= 400:
        raise typer.Exit(1)


@cli.command()
def submit(payload: Annotated[str, typer.Argument(help="JSON payload, or @file, or - for stdin")],
           url: UrlOpt = DEFAULT_URL,
           handler: Annotated[str | None, typer.Option(help="metadata.handler")] = None,
           endpoint: Annotated[str | None, typer.Option(help="metadata.endpoint")] = None,
           priority: Annotated[str | None, typer.Option(help="LOW, NORMAL, HIGH, URGENT or 0-15")] = None,
           wait: Annotated[float | None, typer.Option(help="wait up to N s and print the result")] = None) -> None:
    """Submit a request; prints its id, or its result with --wait."""
    text = sys.stdin.read() if payload == "-" else Path(payload[1:]).read_text() if payload.startswith("@") \
        else payload
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"payload is not valid JSON: {exc}")
    metadata = {k: v for k, v in {"handler": handler, "endpoint": endpoint, "priority": priority}.items() if v}
    headers = {"Prefer": f"wait={wait:g}"} if wait else {}
    response = _call("POST", url, "/api/v1/submit", json={"payload": data, "metadata": metadata}, headers=headers)
    if response.status_code == 202 and not wait:
        typer.echo(response.json()["correlation_id"])
        return
    if response.status_code == 202 and wait:
        typer.secho(f"not finished within {wait:g} s; still {response.json()['status']}", err=True)
        typer.echo(response.json()["correlation_id"])
        raise typer.Exit(3)
    _print(response)


@cli.command()
def status(correlation_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Show a request's status."""
    _print(_call("GET", url, f"/api/v1/status/{correlation_id}"))


@cli.command()
def result(correlation_id: str, url: UrlOpt = DEFAULT_URL,
           wait: Annotated[float, typer.Option(help="long-poll up to N s")] = 0) -> None:
    """Show a request's result (202 body while it is not finished)."""
    _print(_call("GET", url, f"/api/v1/response/{correlation_id}", params={"wait": wait} if wait else None))


@dlq_cli.command("list")
def dlq_list(url: UrlOpt = DEFAULT_URL, limit: int = 100) -> None:
    _print(_call("GET", url, "/api/v1/dlq", params={"limit": limit}))


@dlq_cli.command("replay")
def dlq_replay(dead_letter_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    _print(_call("POST", url, f"/api/v1/dlq/{dead_letter_id}/replay"))


@dlq_cli.command("purge")
def dlq_purge(url: UrlOpt = DEFAULT_URL, yes: Annotated[bool, typer.Option("--yes")] = False) -> None:
    if not yes:
        typer.confirm("Delete every dead letter?", abort=True)
    _print(_call("DELETE", url, "/api/v1/dlq"))


@cli.command()
def stats(url: UrlOpt = DEFAULT_URL) -> None:
    """Counts per state, queue depth, recent throughput and latency (needs the admin scope)."""
    _print(_call("GET", url, "/api/v1/stats"))


@cli.command()
def cleanup(config: ConfigOpt = None,
            older_than: Annotated[float, typer.Option("--older-than", help="seconds since completion")] = 0.0
            ) -> None:
    """Delete finished requests completed more than --older-than seconds ago (default: results.ttl_s
    and results.ttl_by_status)."""
    from openhqm.bridge import cleanup as cleanup_results
    from openhqm.results import create_store

    settings = settings_from(config)

    async def run() -> int:
        store = create_store(settings)
        await store.connect()
        try:
            return await cleanup_results(store, settings.results, time.time(), older_than or None)
        finally:
            await store.close()

    typer.echo(f"removed {asyncio.run(run())} finished request(s)")


@cli.command()
def backends() -> None:
    """Print the queue backends and their capabilities (the table in docs/backends.md)."""
    from openhqm.backends.registry import capability_table

    typer.echo(capability_table())


@config_cli.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the configuration and print it with secrets redacted."""
    settings = settings_from(config)
    typer.echo(yaml.safe_dump(redacted(settings), sort_keys=False))


def main() -> None:
    try:
        cli()
    except MissingDependency as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
