"""Commands that talk to a running listener over its HTTP API.

Exit codes: 0 done, 1 the API answered with an error (or `wait` saw the request fail), 2 a usage
error or an unreachable listener, 3 still not finished when the wait ended."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from openhqm.cli.common import DEFAULT_URL, IdArg, JsonOpt, UrlOpt, fail
from openhqm.cli.output import ProgressDisplay, is_terminal, key_values, print_json, show, table
from openhqm.constants import Status

NOT_FINISHED_EXIT = 3
DEFAULT_WAIT_TIMEOUT_S = 3600.0
# A long poll ends when the request finishes, not when its progress moves: polls this short keep
# the progress bar live at one small request per second.
WAIT_POLL_S = 1.0
DLQ_COLUMNS = ("id", "correlation_id", "reason", "attempts", "dead_lettered_at", "last_error")


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


def _read_payload(payload: str) -> Any:
    try:
        text = sys.stdin.read() if payload == "-" else Path(payload[1:]).read_text() if payload.startswith("@") \
            else payload
    except OSError as exc:
        fail(f"payload file {payload[1:]} cannot be read: {exc.strerror}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"payload is not valid JSON: {exc}")


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            fail(f"--metadata {pair!r} is not KEY=VALUE")
        metadata[key.strip()] = value
    return metadata


def submit(payload: Annotated[str, typer.Argument(help="JSON payload, or @file, or - for stdin")],
           url: UrlOpt = DEFAULT_URL,
           handler: Annotated[str | None, typer.Option(help="metadata.handler: the handler to run")] = None,
           endpoint: Annotated[str | None, typer.Option(help="metadata.endpoint: the backend to call")] = None,
           priority: Annotated[str | None, typer.Option(help="LOW, NORMAL, HIGH, URGENT or 0-15")] = None,
           delay: Annotated[float | None, typer.Option(min=0, help="run no sooner than N s from now")] = None,
           session: Annotated[str | None, typer.Option(help="metadata.session_id: run in order with others")
                              ] = None,
           idempotency_key: Annotated[str | None, typer.Option(
               help="Idempotency-Key header: a repeat returns the original request")] = None,
           metadata: Annotated[list[str] | None, typer.Option(
               "--metadata", help="KEY=VALUE passed to the handler in metadata (repeatable)")] = None,
           wait: Annotated[float | None, typer.Option(help="wait up to N s and print the result")] = None,
           as_json: JsonOpt = False) -> None:
    """Submit a request; prints its id, or its result with --wait (exit 3 if not finished by then)."""
    data = _read_payload(payload)
    given = {"handler": handler, "endpoint": endpoint, "priority": priority, "delay_s": delay,
             "session_id": session}
    meta = {**parse_metadata(metadata or []), **{k: v for k, v in given.items() if v is not None}}
    headers = {"Prefer": f"wait={wait:g}"} if wait else {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    response = _call("POST", url, "/api/v1/submit", json={"payload": data, "metadata": meta}, headers=headers)
    unfinished = bool(wait) and response.status_code == 202
    if as_json or response.status_code >= 400 or (wait and not unfinished):
        show(response, key_values, as_json=as_json)
    else:  # the id is the answer, also when an Idempotency-Key repeat finds the request finished
        typer.echo(response.json()["correlation_id"])
    if unfinished:
        typer.secho(f"not finished within {wait:g} s; still {response.json()['status']}", err=True)
        raise typer.Exit(NOT_FINISHED_EXIT)


def status(correlation_id: IdArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Show a request's status."""
    show(_call("GET", url, f"/api/v1/status/{correlation_id}"), key_values, as_json=as_json)


def result(correlation_id: IdArg, url: UrlOpt = DEFAULT_URL,
           wait: Annotated[float, typer.Option(help="long-poll up to N s")] = 0, as_json: JsonOpt = False) -> None:
    """Show a request's result (its status while it is not finished)."""
    response = _call("GET", url, f"/api/v1/response/{correlation_id}", params={"wait": wait} if wait else None)
    show(response, key_values, as_json=as_json)


def cancel(correlation_id: IdArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Cancel a request; prints its status (CANCELLED), or the API's reason it cannot be cancelled."""
    show(_call("DELETE", url, f"/api/v1/requests/{correlation_id}"), key_values, as_json=as_json)


def wait(correlation_id: IdArg, url: UrlOpt = DEFAULT_URL,
         timeout: Annotated[float, typer.Option(min=0, help="give up after N s (exit 3)")] = DEFAULT_WAIT_TIMEOUT_S,
         as_json: JsonOpt = False) -> None:
    """Wait until a request finishes, showing its progress: exit 0 COMPLETED, 1 otherwise, 3 on --timeout."""
    response = _poll_until_finished(correlation_id, url, timeout)
    if response.status_code == 202:
        last = response.json()
        if as_json or not is_terminal():
            print_json(last)
        typer.secho(f"{correlation_id} not finished within {timeout:g} s; still {last.get('status')}", err=True)
        raise typer.Exit(NOT_FINISHED_EXIT)
    show(response, key_values, as_json=as_json)
    if response.json().get("status") != Status.COMPLETED:
        raise typer.Exit(1)


def _poll_until_finished(correlation_id: str, url: str, timeout_s: float) -> httpx.Response:
    """The first answer that is not 202 (the result, or an error), else the last 202 at the deadline."""
    deadline = time.monotonic() + timeout_s
    display = ProgressDisplay()
    try:
        with _client(url) as client:
            while True:
                poll_s = max(0.0, min(deadline - time.monotonic(), WAIT_POLL_S))
                response = client.get(f"/api/v1/response/{correlation_id}", params={"wait": f"{poll_s:.3f}"})
                if response.status_code != 202 or time.monotonic() >= deadline:
                    return response
                display.update(response.json())
    except httpx.HTTPError as exc:
        fail(f"cannot reach the listener at {url}: {exc}")
    finally:
        display.close()


def stats(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Counts per state, queue depth, recent throughput and latency (needs the admin scope)."""
    show(_call("GET", url, "/api/v1/stats"), lambda body: key_values(body, flatten=True), as_json=as_json)


def dlq_list(url: UrlOpt = DEFAULT_URL,
             limit: Annotated[int, typer.Option(min=1, max=1000, help="show at most N entries")] = 100,
             as_json: JsonOpt = False) -> None:
    """List dead letters: id, request, reason, attempts and the last error."""
    show(_call("GET", url, "/api/v1/dlq", params={"limit": limit}), lambda rows: table(rows, DLQ_COLUMNS),
         as_json=as_json)


def dlq_replay(dead_letter_id: Annotated[str, typer.Argument(help="the dead letter's id (dlq list)")],
               url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Submit a dead letter's request again, as a new request."""
    show(_call("POST", url, f"/api/v1/dlq/{dead_letter_id}/replay"), key_values, as_json=as_json)


def dlq_purge(url: UrlOpt = DEFAULT_URL,
              yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
              as_json: JsonOpt = False) -> None:
    """Delete every dead letter."""
    if not yes:
        typer.confirm("Delete every dead letter?", abort=True)
    show(_call("DELETE", url, "/api/v1/dlq"), key_values, as_json=as_json)


def callback_resend(correlation_id: IdArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Deliver a finished request's callback again (admin scope); prints whether it was delivered."""
    show(_call("POST", url, f"/api/v1/requests/{correlation_id}/callback"), key_values, as_json=as_json)
