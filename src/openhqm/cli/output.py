"""How client commands print: the API's JSON for scripts, aligned lines and tables for people.

Plain text rather than rich tables: the output stays the same on every terminal, width and locale,
and scripts never see it (they get JSON whenever stdout is not a terminal)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import httpx
import typer

from openhqm.config_sources import dotted

CELL_MAX_CHARS = 60
BAR_WIDTH = 30

Render = Callable[[Any], str]


def is_terminal(stream: TextIO | None = None) -> bool:
    return (stream or sys.stdout).isatty()


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2) if not isinstance(data, str) else data)


def show(response: httpx.Response, render: Render, *, as_json: bool) -> None:
    """The answer as JSON (with --json, or when piped) or rendered; an HTTP error exits 1."""
    data = body_of(response)
    failed = response.status_code >= 400
    if as_json or not is_terminal():
        print_json(data)
    elif failed:
        detail = data.get("detail", data) if isinstance(data, dict) else data
        typer.secho(f"error: {cell(detail, limit=None)} (HTTP {response.status_code})", fg=typer.colors.RED,
                    err=True)
    else:
        typer.echo(render(data))
    if failed:
        raise typer.Exit(1)


def cell(value: Any, limit: int | None = CELL_MAX_CHARS) -> str:
    """One value on one line: strings as they are, other values as compact JSON, None as '-'."""
    if value is None:
        text = "-"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(", ", ": "))
    text = " ".join(text.splitlines()) if "\n" in text else text
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def key_values(data: Any, *, flatten: bool = False) -> str:
    """Aligned `key  value` lines; `flatten` spells nested mappings as dotted keys (stats)."""
    if not isinstance(data, Mapping):
        return cell(data, limit=None)
    items = list(dotted(data)) if flatten else list(data.items())
    width = max((len(key) for key, _ in items), default=0)
    return "\n".join(f"{key.ljust(width)}  {cell(value, limit=None)}" for key, value in items)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A header line and one aligned line per row; long cells are cut to CELL_MAX_CHARS."""
    if not rows:
        return "(none)"
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [list(columns), *cells]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def progress_text(progress: Mapping[str, Any], *, bar: bool) -> str:
    """`[#####-----]  50% message` for a terminal, `50% message` as a plain line."""
    fraction = min(1.0, max(0.0, float(progress.get("fraction") or 0.0)))
    message = progress.get("message") or ""
    percent = f"{fraction:4.0%}" if bar else f"{fraction:.0%}"
    if not bar:
        return f"{percent} {message}".rstrip()
    filled = round(fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent} {message}".rstrip()


class ProgressDisplay:
    """Shows a waiting request's `progress` on stderr, so stdout keeps only the answer: one line
    redrawn in place on a terminal, otherwise a plain line each time the progress changes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = is_terminal(self.stream)
        self.last: tuple[Any, Any] | None = None
        self.drawn = False

    def update(self, status: Any) -> None:
        progress = status.get("progress") if isinstance(status, Mapping) else None
        if not isinstance(progress, Mapping):
            return
        current = (progress.get("fraction"), progress.get("message"))
        if current == self.last:
            return
        self.last = current
        text = progress_text(progress, bar=self.live)
        if self.live:
            columns = shutil.get_terminal_size().columns
            self.stream.write("\r" + text[: max(columns - 1, 1)] + "\x1b[K")  # erase the rest of the line
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
