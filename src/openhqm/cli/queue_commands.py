"""`openhqm queues list|pause|resume`: a running listener's queues (list: read scope; pause and
resume: admin scope)."""

from __future__ import annotations

from typing import Annotated

import typer

from openhqm.cli.client_commands import _call
from openhqm.cli.common import DEFAULT_URL, JsonOpt, UrlOpt
from openhqm.cli.output import key_values, show, table

QUEUE_COLUMNS = ("name", "paused", "pending", "scheduled", "processing", "dead_letters", "oldest_pending_age_s",
                 "backend", "depth", "not_reported")
QueueArg = Annotated[str, typer.Argument(help="the queue's name (queues list)")]


def queues_list(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """List queues: paused or not, requests waiting and running, dead letters (null: not reported)."""
    show(_call("GET", url, "/api/v1/queues"), lambda rows: table(rows, QUEUE_COLUMNS), as_json=as_json)


def queues_pause(queue: QueueArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Workers take nothing more from the queue (submits are still accepted; running jobs finish)."""
    show(_call("POST", url, f"/api/v1/queues/{queue}/pause"), key_values, as_json=as_json)


def queues_resume(queue: QueueArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Workers take from the queue again."""
    show(_call("POST", url, f"/api/v1/queues/{queue}/resume"), key_values, as_json=as_json)
