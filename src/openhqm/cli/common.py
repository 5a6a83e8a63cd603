"""What every `openhqm` command shares: option types, the one-line error exit, settings from flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from openhqm.config import Settings, load_settings
from openhqm.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8000"

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file (or OPENHQM_CONFIG)")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="OPENHQM_URL", help="listener base URL")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="print the API's JSON as it is (also the output when stdout is not a terminal)")]
IdArg = Annotated[str, typer.Argument(help="the request's correlation id")]
HostOpt = Annotated[str | None, typer.Option(help="server.host")]
PortOpt = Annotated[int | None, typer.Option(help="server.port")]
QueueTypeOpt = Annotated[str | None, typer.Option("--queue-type", help="queue.type")]
DataDirOpt = Annotated[Path | None, typer.Option(help="data_dir")]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="worker.concurrency")]
EngineOpt = Annotated[str | None, typer.Option(
    "--engine", help="server.engine: the HTTP server, uvicorn (default) or granian (the granian extra)")]
ProcessesOpt = Annotated[int | None, typer.Option(
    "--processes", help="server.processes: processes serving the one port, each a whole server (default 1)")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"server.port": 1} -> {"server": {"port": 1}}, leaving out flags not given (None)."""
    tree: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        target = tree
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return tree


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, nested(overrides))
    except ConfigError as exc:
        fail(str(exc))
