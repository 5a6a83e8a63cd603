"""`openhqm schedules list|run|pause|resume`: a running listener's schedules (admin scope)."""

from __future__ import annotations

from typing import Annotated

import typer

from openhqm.cli.client_commands import _call
from openhqm.cli.common import DEFAULT_URL, JsonOpt, UrlOpt
from openhqm.cli.output import key_values, show, table

SCHEDULE_COLUMNS = ("name", "source", "cron", "every_s", "paused", "next_run_at", "last_run_at",
                    "last_correlation_id")
NameArg = Annotated[str, typer.Argument(help="the schedule's name (schedules list)")]


def schedules_list(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """List schedules: their trigger, next and last run, and the last run's request."""
    show(_call("GET", url, "/api/v1/schedules"), lambda rows: table(rows, SCHEDULE_COLUMNS), as_json=as_json)


def schedules_run(name: NameArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Fire a schedule now (outside its ticks); prints the request's correlation id."""
    show(_call("POST", url, f"/api/v1/schedules/{name}/run"),
         lambda data: key_values({"correlation_id": data["correlation_id"]}), as_json=as_json)


def schedules_pause(name: NameArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Stop a schedule's ticks until it is resumed."""
    show(_call("POST", url, f"/api/v1/schedules/{name}/pause"), key_values, as_json=as_json)


def schedules_resume(name: NameArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Resume a paused schedule from its next tick (missed ticks are not caught up)."""
    show(_call("POST", url, f"/api/v1/schedules/{name}/resume"), key_values, as_json=as_json)
