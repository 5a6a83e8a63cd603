"""`openhqm config check`: validate, show the effective configuration and where it came from, try it."""

from __future__ import annotations

from typing import Annotated, Any

import typer
import yaml

from openhqm.cli.common import (
    ConcurrencyOpt,
    ConfigOpt,
    DataDirOpt,
    HostOpt,
    PortOpt,
    QueueTypeOpt,
    nested,
    settings_from,
)
from openhqm.cli.output import cell
from openhqm.cli.server import check_connections
from openhqm.config import redacted
from openhqm.config_sources import FLAG, setting_sources

VALUE_COLUMN_CHARS = 40
# The flags `serve` takes, by the setting they set: check the configuration `serve` would run with.
FLAG_NAMES = {"server.host": "--host", "server.port": "--port", "queue.type": "--queue-type",
              "data_dir": "--data-dir", "worker.concurrency": "--concurrency"}


def config_check(config: ConfigOpt = None, host: HostOpt = None, port: PortOpt = None,
                 queue_type: QueueTypeOpt = None, data_dir: DataDirOpt = None, concurrency: ConcurrencyOpt = None,
                 sources: Annotated[bool, typer.Option(
                     "--sources", help="show where each value came from: default, YAML file, environment "
                     "variable or flag")] = False,
                 connect: Annotated[bool, typer.Option(
                     "--connect", help="also connect to the queue and the result store (exit 1 if one fails)")
                                    ] = False) -> None:
    """Validate the configuration and print it with secrets redacted (the flags are those of `serve`)."""
    overrides: dict[str, Any] = {"server.host": host, "server.port": port, "queue.type": queue_type,
                                 "data_dir": data_dir, "worker.concurrency": concurrency}
    settings = settings_from(config, **overrides)
    if sources:
        found = setting_sources(settings, config, nested(overrides))
        typer.echo(_sources_table({key: (value, _flag_label(key, source)) for key, (value, source) in found.items()}))
    else:
        typer.echo(yaml.safe_dump(redacted(settings), sort_keys=False).rstrip())
    if connect:
        reached = check_connections(settings)
        for part in reached:
            typer.echo(f"{part.label}: OK" if part.error is None else f"{part.label or part.part}: failed: "
                       f"{part.error}")
        if any(part.error is not None for part in reached):
            raise typer.Exit(1)


def _flag_label(key: str, source: str) -> str:
    return f"{FLAG} {FLAG_NAMES[key]}" if source == FLAG and key in FLAG_NAMES else source


def _sources_table(found: dict[str, tuple[Any, str]]) -> str:
    """`key  value  source` lines; a value longer than the column is shown whole and pushes only its
    own source to the right."""
    values = {key: cell(value, limit=None) for key, (value, _) in found.items()}
    key_width = max(map(len, found), default=0)
    value_width = min(max(map(len, values.values()), default=0), VALUE_COLUMN_CHARS)
    return "\n".join(f"{key.ljust(key_width)}  {values[key].ljust(value_width)}  {source}"
                     for key, (_, source) in found.items())
