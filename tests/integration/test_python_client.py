"""openhqm.Client and openhqm.AsyncClient against `openhqm serve`'s app on a real socket in the test
process (tests/harness.py). Moved from tests/e2e/."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

import pytest

from openhqm import AsyncClient, Client
from openhqm.client import (
    ClientError,
    RequestFailed,
    RequestNotFound,
    RequestResult,
    RequestTimeout,
    SubmitResult,
)
from tests.harness import Sample, served, settings


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(Sample().app, settings(tmp_path_factory.mktemp("client"))) as base_url:
        yield base_url


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url) as c:
        yield c


def test_submit_then_wait_returns_the_result(client: Client) -> None:
    queued = client.submit({"n": 1}, handler="record")
    assert isinstance(queued, SubmitResult) and queued.submitted_at is not None
    result = client.wait(queued.correlation_id, timeout_s=20)
    assert result.status == "COMPLETED" and result.done
    assert result.result == {"n": 1} and result.attempts == 1 and result.completed_at is not None


def test_submit_with_wait_s_returns_the_result_inline(client: Client) -> None:
    result = client.submit(["inline"], wait_s=10)
    assert isinstance(result, RequestResult)
    assert result.status == "COMPLETED" and result.result == ["inline"]


def test_status_reports_the_fields_sent_as_metadata(client: Client) -> None:
    session = f"s-{uuid.uuid4().hex}"
    done = client.submit("x", handler="record", priority="HIGH", session_id=session, wait_s=10)
    status = client.status(done.correlation_id)
    assert status.status == "COMPLETED" and status.session_id == session and status.done


def test_scheduled_request_is_cancelled_and_its_result_raises(client: Client) -> None:
    queued = client.submit({"later": True}, handler="record", delay_s=60)
    assert queued.status == "SCHEDULED"
    cancelled = client.cancel(queued.correlation_id)
    assert cancelled.status == "CANCELLED"
    with pytest.raises(RequestFailed) as caught:
        client.result(queued.correlation_id)
    assert caught.value.result.status == "CANCELLED"
    with pytest.raises(ClientError) as conflict:
        client.cancel(queued.correlation_id)
    assert conflict.value.status_code == 409 and "CANCELLED" in str(conflict.value.detail)


def test_unknown_id_raises_request_not_found(client: Client) -> None:
    for call in (client.status, client.result, client.cancel):
        with pytest.raises(RequestNotFound) as caught:
            call("no-such-id")
        assert caught.value.status_code == 404 and "no-such-id" in str(caught.value)


def test_handler_that_gives_up_raises_request_failed_with_its_error(client: Client) -> None:
    queued = client.submit(1, handler="give_up")
    with pytest.raises(RequestFailed) as caught:
        client.wait(queued.correlation_id, timeout_s=20)
    assert caught.value.result.status == "FAILED" and "never succeed" in (caught.value.error or "")
    with pytest.raises(RequestFailed):
        client.submit(1, handler="give_up", wait_s=10)


def test_wait_raises_request_timeout_when_the_request_is_not_done(client: Client) -> None:
    queued = client.submit(1, handler="record", delay_s=60)
    with pytest.raises(RequestTimeout) as caught:
        client.wait(queued.correlation_id, timeout_s=0.5)
    assert caught.value.last is not None and caught.value.last.status == "SCHEDULED"
    client.cancel(queued.correlation_id)


def test_idempotency_key_returns_the_first_request(client: Client) -> None:
    key = uuid.uuid4().hex
    first = client.submit({"once": True}, idempotency_key=key)
    again = client.submit({"once": True}, idempotency_key=key)
    assert again.correlation_id == first.correlation_id


def test_events_follow_the_request_to_its_end(client: Client) -> None:
    queued = client.submit({"n": 2}, handler="record", delay_s=0.5)
    events = list(client.events(queued.correlation_id))
    assert events[0].status == "SCHEDULED" and events[-1].status == "COMPLETED"
    assert {e.correlation_id for e in events} == {queued.correlation_id}


def test_events_of_an_unknown_id_raise_request_not_found(client: Client) -> None:
    with pytest.raises(RequestNotFound):
        list(client.events("no-such-id"))


def test_unreachable_server_raises_client_error() -> None:
    with socket.socket() as bound_not_listening:  # held for the test: nothing can listen there
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        with Client(f"http://127.0.0.1:{port}", timeout_s=2) as client, \
                pytest.raises(ClientError, match="ConnectError"):
            client.status("x")


async def test_async_client_submits_waits_and_streams_events(url: str) -> None:
    async with AsyncClient(url) as client:
        inline = await client.submit({"a": 1}, wait_s=10)
        assert isinstance(inline, RequestResult) and inline.result == {"a": 1}
        queued = await client.submit({"a": 2}, handler="record", delay_s=0.3)
        async with contextlib.aclosing(client.events(queued.correlation_id)) as stream:
            statuses = [event.status async for event in stream]
        assert statuses[0] == "SCHEDULED" and statuses[-1] == "COMPLETED"
        assert (await client.wait(queued.correlation_id, timeout_s=10)).result == {"a": 2}
        assert (await client.status(queued.correlation_id)).status == "COMPLETED"
        with pytest.raises(RequestNotFound):
            await client.result("no-such-id", wait_s=0.1)
        with pytest.raises(RequestFailed):
            await client.wait((await client.submit(1, handler="give_up")).correlation_id, timeout_s=20)
