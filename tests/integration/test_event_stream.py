"""Server-Sent Events of a request (sse-starlette on the server, httpx-sse in the client): every event
has an id and a retry interval, and a stream resumed with Last-Event-ID sends only what changed since."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from httpx_sse import connect_sse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from openhqm import AsyncClient, Client
from tests.harness import Sample, served, settings
from tests.integration.http_servers import serve


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(Sample().app, settings(tmp_path_factory.mktemp("events"))) as base_url:
        yield base_url


def test_events_carry_an_id_and_a_retry_interval(url: str) -> None:
    cid = httpx.post(f"{url}/api/v1/submit", json={"payload": 1}, headers={"Prefer": "wait=10"}).json()[
        "correlation_id"]
    with httpx.Client(base_url=url) as http, connect_sse(http, "GET", f"/api/v1/requests/{cid}/events") as source:
        [event] = list(source.iter_sse())
    assert event.event == "status" and json.loads(event.data)["status"] == "COMPLETED"
    assert event.id and event.retry == 1000


def test_a_stream_resumed_with_last_event_id_sends_only_what_changed_since(url: str) -> None:
    cid = httpx.post(f"{url}/api/v1/submit", json={"payload": 1, "metadata": {"delay_s": 60}}).json()[
        "correlation_id"]
    path = f"/api/v1/requests/{cid}/events"
    with httpx.Client(base_url=url, timeout=10) as http:
        with connect_sse(http, "GET", path) as source:
            scheduled = next(source.iter_sse())  # then the client goes away
        assert json.loads(scheduled.data)["status"] == "SCHEDULED"
        with connect_sse(http, "GET", path, headers={"Last-Event-ID": scheduled.id}) as source:
            assert http.delete(f"/api/v1/requests/{cid}").status_code == 200
            resumed = [json.loads(e.data)["status"] for e in source.iter_sse()]
        assert resumed == ["CANCELLED"]
        with connect_sse(http, "GET", path, headers={"Last-Event-ID": "0.000000"}) as source:
            assert [json.loads(e.data)["status"] for e in source.iter_sse()] == ["CANCELLED"]


@pytest.fixture
def stream_cut_after_first_event() -> Iterator[tuple[str, list[str | None]]]:
    """An events endpoint that ends its first stream before the terminal event, as a restarting
    listener does, and records the Last-Event-ID each connection brought."""
    resumed_from: list[str | None] = []

    async def events(request: Request) -> EventSourceResponse:
        resumed_from.append(request.headers.get("last-event-id"))
        status, event_id = ("PROCESSING", "first") if len(resumed_from) == 1 else ("COMPLETED", "second")

        async def one() -> AsyncIterator[ServerSentEvent]:
            data = json.dumps({"correlation_id": "c1", "status": status, "attempts": 1})
            yield ServerSentEvent(data, event="status", id=event_id, retry=10)

        return EventSourceResponse(one())

    with serve(Starlette(routes=[Route("/api/v1/requests/c1/events", events)])) as base_url:
        yield base_url, resumed_from


def test_client_resumes_a_stream_the_server_ended_early(
    stream_cut_after_first_event: tuple[str, list[str | None]]
) -> None:
    base_url, resumed_from = stream_cut_after_first_event
    with Client(base_url) as client:
        assert [e.status for e in client.events("c1")] == ["PROCESSING", "COMPLETED"]
    assert resumed_from == [None, "first"]


async def test_async_client_resumes_a_stream_the_server_ended_early(
    stream_cut_after_first_event: tuple[str, list[str | None]]
) -> None:
    base_url, resumed_from = stream_cut_after_first_event
    async with AsyncClient(base_url) as client:
        assert [e.status async for e in client.events("c1")] == ["PROCESSING", "COMPLETED"]
    assert resumed_from == [None, "first"]
