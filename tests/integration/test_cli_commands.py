"""The client commands (`openhqm submit`, `wait`, `cancel`, ...) against a real listener in this process.

typer's CliRunner runs each command here; the listener runs on a real socket (`served`). Its stdout
is not a terminal, so the commands print the API's JSON, as they do in scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner, Result

from openhqm.cli import cli
from openhqm.worker.handlers import Job
from tests.harness import Sample, served, settings
from tests.integration.http_servers import serve


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[str]:
    sample = Sample()

    @sample.app.handler("context")
    async def context(job: Job) -> dict[str, Any]:
        return {"metadata": job.metadata, "priority": job.envelope.priority, "session_id": job.session_id}

    # CliRunner swaps sys.stdout for the whole process: the listener thread's logs must not land in
    # the command's output, so they go to a list for the test's duration.
    with structlog.testing.capture_logs(), served(sample.app, settings(tmp_path)) as url:
        yield url


def openhqm(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--url", url])


def submitted(url: str, *args: str) -> str:
    result = openhqm(url, "submit", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_submit_passes_handler_priority_session_and_metadata_to_the_handler(listener: str) -> None:
    cid = submitted(listener, "{}", "--handler", "context", "--priority", "HIGH", "--session", "s-1",
                    "--metadata", "team=ops", "--metadata", "ticket=a=b")
    waited = openhqm(listener, "wait", cid, "--timeout", "30")
    assert waited.exit_code == 0, waited.output
    seen = json.loads(waited.stdout)["result"]
    assert (seen["priority"], seen["session_id"]) == (10, "s-1")
    assert {"team": "ops", "ticket": "a=b"}.items() <= seen["metadata"].items()


def test_submit_with_a_delay_schedules_the_request_and_cancel_ends_it(listener: str) -> None:
    cid = submitted(listener, '{"n": 1}', "--delay", "300")
    assert json.loads(openhqm(listener, "status", cid).stdout)["status"] == "SCHEDULED"
    cancelled = openhqm(listener, "cancel", cid)
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
    assert openhqm(listener, "wait", cid).exit_code == 1


def test_cancel_of_a_finished_request_exits_1_with_the_api_answer(listener: str) -> None:
    done = openhqm(listener, "submit", "1", "--wait", "30")
    cid = json.loads(done.stdout)["correlation_id"]
    refused = openhqm(listener, "cancel", cid)
    assert refused.exit_code == 1
    assert "detail" in json.loads(refused.stdout)


def test_submit_with_the_same_idempotency_key_returns_the_original_request(listener: str) -> None:
    first = submitted(listener, '{"n": 2}', "--idempotency-key", "order-42")
    again = submitted(listener, '{"n": 2}', "--idempotency-key", "order-42")
    assert first == again


def test_a_metadata_pair_without_an_equals_sign_is_an_error_naming_it(listener: str) -> None:
    result = openhqm(listener, "submit", "{}", "--metadata", "team")
    assert result.exit_code == 2
    assert "--metadata 'team' is not KEY=VALUE" in result.stderr


def test_wait_exits_0_when_completed(listener: str) -> None:
    cid = submitted(listener, '{"n": 3}')
    waited = openhqm(listener, "wait", cid, "--timeout", "30")
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["result"] == {"n": 3}


def test_wait_exits_1_when_the_request_failed(listener: str) -> None:
    cid = submitted(listener, "1", "--handler", "give_up")
    waited = openhqm(listener, "wait", cid, "--timeout", "30")
    assert waited.exit_code == 1
    assert json.loads(waited.stdout)["status"] == "FAILED"


def test_wait_exits_3_when_the_request_is_not_finished_by_the_timeout(listener: str) -> None:
    cid = submitted(listener, "1", "--delay", "300")
    waited = openhqm(listener, "wait", cid, "--timeout", "0.5")
    assert waited.exit_code == 3, waited.stderr
    assert json.loads(waited.stdout)["status"] == "SCHEDULED"
    assert f"{cid} not finished within 0.5 s; still SCHEDULED" in waited.stderr


def test_wait_for_an_unknown_id_exits_1_with_the_api_answer(listener: str) -> None:
    waited = openhqm(listener, "wait", "no-such-request", "--timeout", "5")
    assert waited.exit_code == 1
    assert "detail" in json.loads(waited.stdout)


@pytest.mark.parametrize(("command", "path"), [
    (["status", "{cid}"], "/api/v1/status/{cid}"),
    (["result", "{cid}"], "/api/v1/response/{cid}"),
    (["stats"], "/api/v1/stats"),
    (["dlq", "list"], "/api/v1/dlq"),
])
def test_json_prints_exactly_what_the_api_answers(listener: str, command: list[str], path: str) -> None:
    cid = json.loads(openhqm(listener, "submit", "1", "--wait", "30").stdout)["correlation_id"]
    printed = openhqm(listener, *(part.format(cid=cid) for part in command), "--json")
    assert printed.exit_code == 0, printed.output
    api = httpx.get(listener + path.format(cid=cid)).json()
    if command == ["stats"]:  # throughput figures may move between the two reads; the shape may not
        assert json.loads(printed.stdout).keys() == api.keys()
    else:
        assert json.loads(printed.stdout) == api


def test_submit_json_prints_the_accepted_answer(listener: str) -> None:
    printed = openhqm(listener, "submit", "1", "--json")
    body = json.loads(printed.stdout)
    assert body["status"] in ("PENDING", "PROCESSING", "COMPLETED") and body["correlation_id"]


def test_callback_resend_delivers_a_finished_requests_callback_again(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def hook(request: Request) -> Response:
        received.append(await request.body())
        return Response(status_code=204)

    callbacks = {"enabled": True, "secret": "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=", "allow_hosts": ["127.0.0.1"]}
    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver, \
            structlog.testing.capture_logs(), \
            served(Sample().app, settings(tmp_path, callbacks=callbacks)) as url:
        done = httpx.post(url + "/api/v1/submit", headers={"Prefer": "wait=30"},
                          json={"payload": {"n": 1}, "metadata": {"callback_url": receiver + "/hook"}}).json()
        assert done["status"] == "COMPLETED"
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)  # the first delivery goes out after the answer: wait for it to land
        assert len(received) == 1
        resent = openhqm(url, "callback", "resend", done["correlation_id"])
    assert resent.exit_code == 0, resent.output
    assert json.loads(resent.stdout)["delivered"] is True
    assert len(received) == 2
