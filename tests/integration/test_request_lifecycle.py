"""What an operator sees of one request's life, in the test process (tests/harness.py): lifecycle
hooks, callback deliveries, stats against metrics, what a waiting request waits on, dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openhqm.timefmt import parse_rfc3339, rfc3339
from tests.harness import InProcess, Sample, in_process, settings
from tests.integration.http_servers import serve

CALLBACK_SECRET = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM="


@dataclass
class Receiver:
    """A callback receiver on 127.0.0.1 answering the statuses it is given, in order, then 204."""

    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        self.headers.append(dict(request.headers))
        return Response(status_code=self.answers.pop(0) if self.answers else 204)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with serve(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as url:
        receiver.url = url + "/hook"
        yield receiver


@pytest.fixture
def sample() -> Sample:
    return Sample()


def with_callbacks(tmp_path: Path, retry: dict[str, Any] | None = None, **sections: Any) -> Any:
    callbacks = {"enabled": True, "secret": CALLBACK_SECRET, "allow_hosts": ["127.0.0.1"],
                 "retry": retry or {"max_attempts": 1}}
    return settings(tmp_path, callbacks=callbacks, **sections)


@pytest.fixture
async def hq(sample: Sample, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(sample.app, with_callbacks(tmp_path)) as running:
        yield running


async def status_of(hq: InProcess, correlation_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await hq.client.get(f"/api/v1/status/{correlation_id}")).json()
    return body


async def status_until(hq: InProcess, correlation_id: str, condition: Callable[[dict[str, Any]], Any],
                       timeout_s: float = 10.0) -> dict[str, Any]:
    """The status JSON once `condition` holds: for what is recorded after the answer (callbacks)."""
    async with asyncio.timeout(timeout_s):
        while not condition(status := await status_of(hq, correlation_id)):
            await asyncio.sleep(0.01)
    return status


async def test_completed_hook_fires_once_when_the_callback_fails(
    hq: InProcess, sample: Sample, receiver: Receiver
) -> None:
    receiver.answers = [400]
    cid = (await hq.accepted({"name": "a"}, handler="record", callback_url=receiver.url))["correlation_id"]
    assert (await hq.result(cid))["status"] == "COMPLETED"
    await status_until(hq, cid, lambda status: status.get("callback_error"))
    assert sample.completed_hooks == [cid]


def gauge(metrics_text: str, name: str, label: str) -> float:
    """One sample of the Prometheus text format: `name{...label...} value`."""
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample with {label}")


@pytest.mark.parametrize("queue_type", ["sqlite", "memory"])
async def test_stats_and_metrics_report_the_same_figures_after_a_delayed_request_is_cancelled(
    sample: Sample, tmp_path: Path, queue_type: str
) -> None:
    async with in_process(sample.app, settings(tmp_path, queue={"type": queue_type})) as hq:
        cid = (await hq.accepted({"name": "later"}, handler="record", delay_s=3600))["correlation_id"]
        assert (await hq.client.delete(f"/api/v1/requests/{cid}")).json()["status"] == "CANCELLED"
        stats = (await hq.client.get("/api/v1/stats")).json()
        exported = (await hq.client.get("/metrics")).text
    depth = stats["queues"]["openhqm-requests"]["depth"]
    assert gauge(exported, "openhqm_queue_depth", 'queue="openhqm-requests"') == depth
    assert gauge(exported, "openhqm_results", 'status="CANCELLED"') == stats["requests"]["CANCELLED"] == 1
    assert stats["oldest_unfinished_age_s"] is None


async def test_callbacks_say_they_come_from_openhqm_and_its_version(hq: InProcess, receiver: Receiver) -> None:
    cid = (await hq.accepted({"name": "a"}, handler="record", callback_url=receiver.url))["correlation_id"]
    await hq.result(cid)
    async with asyncio.timeout(10):
        while not receiver.headers:
            await asyncio.sleep(0.01)  # the callback is sent after the result is stored
    assert receiver.headers[0]["user-agent"] == f"openhqm/{version('openhqm')}"


# --- what a waiting request waits on -------------------------------------------------------------


def is_time_ahead(value: str | None) -> bool:
    return value is not None and parse_rfc3339(value) > time.time()


async def test_a_scheduled_request_waits_on_its_schedule_until_its_run_at(hq: InProcess) -> None:
    run_at = time.time() + 3600
    cid = (await hq.accepted({"name": "later"}, handler="record", run_at=rfc3339(run_at)))["correlation_id"]
    status = await status_of(hq, cid)
    assert (status["status"], status["waiting_on"]) == ("SCHEDULED", "schedule")
    assert status["next_attempt_at"] == rfc3339(run_at)


async def test_a_request_in_retry_backoff_waits_on_retry(sample: Sample, tmp_path: Path) -> None:
    slow_retries = {"retry": {"max_attempts": 3, "base_delay_s": 60, "max_delay_s": 60}}
    async with in_process(sample.app, settings(tmp_path, worker=slow_retries)) as hq:
        cid = (await hq.accepted({}, handler="flaky"))["correlation_id"]
        status = await status_until(hq, cid, lambda status: status["status"] == "RETRY")
    assert status["waiting_on"] == "retry" and status["attempts"] == 1
    assert "marker present" in status["error"] and is_time_ahead(status["next_attempt_at"])


async def test_waiting_is_cleared_once_the_request_runs_and_ends(sample: Sample, tmp_path: Path) -> None:
    async with in_process(sample.app, settings(tmp_path)) as hq:
        cid = (await hq.accepted({}, handler="fail_once"))["correlation_id"]
        assert (await hq.result(cid))["status"] == "COMPLETED"
        status = await status_of(hq, cid)
    assert (status["waiting_on"], status["next_attempt_at"], status["attempts"]) == (None, None, 2)


async def always_unavailable(request: Request) -> Response:
    return Response(b"down", status_code=503)


async def test_a_request_deferred_by_an_open_circuit_is_pending_and_names_the_circuit(
    sample: Sample, tmp_path: Path
) -> None:
    endpoint = {"circuit": {"failure_threshold": 1, "reset_timeout_s": 600},
                "retry": {"max_attempts": 5, "base_delay_s": 0.01, "max_delay_s": 0.02}}
    with serve(Starlette(routes=[Route("/", always_unavailable, methods=["POST"])])) as url:
        proxy = {"enabled": True, "endpoints": {"down": {"url": url + "/", **endpoint}}}
        async with in_process(sample.app, settings(tmp_path, proxy=proxy)) as hq:
            cid = (await hq.accepted({}, endpoint="down"))["correlation_id"]
            status = await status_until(hq, cid, lambda status: status["waiting_on"] == "circuit:down")
    assert (status["status"], status["waiting_on"], status["attempts"]) == ("PENDING", "circuit:down", 1)
    assert is_time_ahead(status["next_attempt_at"])


# --- dead letters say where and why --------------------------------------------------------------


async def dead_letter_of(hq: InProcess, correlation_id: str) -> dict[str, Any]:
    assert (await hq.result(correlation_id))["status"] == "FAILED"
    [entry] = [d for d in (await hq.client.get("/api/v1/dlq")).json() if d["correlation_id"] == correlation_id]
    return dict(entry)


async def test_a_dead_letter_carries_its_handler_and_traceback_with_secrets_masked(
    sample: Sample, tmp_path: Path
) -> None:
    @sample.app.handler("leaky")
    async def leaky(job: Any) -> Any:
        raise RuntimeError(f"could not sign with {CALLBACK_SECRET}")

    async with in_process(sample.app, with_callbacks(tmp_path, worker={"retry": {"max_attempts": 1}})) as hq:
        entry = await dead_letter_of(hq, (await hq.accepted({}, handler="leaky"))["correlation_id"])
    assert (entry["target"], entry["status_code"]) == ("leaky", None)
    assert "RuntimeError: could not sign with **********" in entry["traceback"] and "in leaky" in entry["traceback"]
    assert entry["last_error"] == "RuntimeError: could not sign with **********"


async def test_a_dead_letter_keeps_the_end_of_a_long_traceback(sample: Sample, tmp_path: Path) -> None:
    @sample.app.handler("deep")
    async def deep(job: Any) -> Any:
        def ping(level: int) -> None:  # two functions: Python shortens a repeated frame, not a pair
            if level == 0:
                raise ValueError("bottom reached")
            pong(level - 1)

        def pong(level: int) -> None:
            ping(level)

        ping(200)

    async with in_process(sample.app, settings(tmp_path, worker={"retry": {"max_attempts": 1}})) as hq:
        entry = await dead_letter_of(hq, (await hq.accepted({}, handler="deep"))["correlation_id"])
    trace = entry["traceback"]
    assert len(trace) <= 8192 and "characters cut]" in trace.splitlines()[0]
    assert trace.endswith("ValueError: bottom reached\n")


async def test_a_dead_letter_of_a_forward_carries_the_endpoint_and_its_last_status(
    sample: Sample, tmp_path: Path
) -> None:
    with serve(Starlette(routes=[Route("/", always_unavailable, methods=["POST"])])) as url:
        endpoint = {"url": url + "/", "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}}
        proxy = {"enabled": True, "endpoints": {"down": endpoint}}
        async with in_process(sample.app, settings(tmp_path, proxy=proxy)) as hq:
            entry = await dead_letter_of(hq, (await hq.accepted({}, endpoint="down"))["correlation_id"])
    assert (entry["target"], entry["status_code"], entry["attempts"]) == ("down", 503, 2)
    assert "HTTP 503" in entry["last_error"] and "TargetFailed" in entry["traceback"]


# --- callback deliveries -------------------------------------------------------------------------


async def test_every_callback_attempt_is_kept_on_the_request(
    sample: Sample, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [503]
    config = with_callbacks(tmp_path, retry={"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.01})
    async with in_process(sample.app, config) as hq:
        cid = (await hq.accepted({}, handler="record", callback_url=receiver.url))["correlation_id"]
        status = await status_until(hq, cid, lambda status: len(status["callbacks"]) == 2)
    first, second = status["callbacks"]
    assert (first["attempt"], first["status_code"], first["error"]) == (1, 503, "receiver answered HTTP 503")
    assert (second["attempt"], second["status_code"], second["error"]) == (2, 204, None)
    assert parse_rfc3339(first["at"]) <= parse_rfc3339(second["at"]) and status["callback_error"] is None


async def test_a_failed_callback_is_delivered_again_on_request(
    hq: InProcess, sample: Sample, receiver: Receiver
) -> None:
    receiver.answers = [400]
    cid = (await hq.accepted({}, handler="record", callback_url=receiver.url))["correlation_id"]
    await status_until(hq, cid, lambda status: status["callback_error"])
    response = await hq.client.post(f"/api/v1/requests/{cid}/callback")
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert (outcome["delivered"], outcome["error"]) == (True, None)
    assert [(a["attempt"], a["status_code"]) for a in outcome["attempts"]] == [(2, 204)]
    status = await status_of(hq, cid)
    assert [a["status_code"] for a in status["callbacks"]] == [400, 204] and status["callback_error"] is None
    assert len(receiver.headers) == 2 and sample.completed_hooks == [cid]


async def test_only_the_latest_callback_attempts_are_kept(hq: InProcess, receiver: Receiver) -> None:
    cid = (await hq.accepted({}, handler="record", callback_url=receiver.url))["correlation_id"]
    await status_until(hq, cid, lambda status: status["callbacks"])
    for _ in range(21):
        assert (await hq.client.post(f"/api/v1/requests/{cid}/callback")).json()["delivered"]
    attempts = [a["attempt"] for a in (await status_of(hq, cid))["callbacks"]]
    assert attempts == list(range(3, 23))


async def test_callback_redelivery_answers_409_before_the_end_or_without_a_url_and_404_for_unknown_ids(
    hq: InProcess, receiver: Receiver
) -> None:
    later = (await hq.accepted({}, handler="record", callback_url=receiver.url, delay_s=3600))["correlation_id"]
    unfinished = await hq.client.post(f"/api/v1/requests/{later}/callback")
    assert unfinished.status_code == 409 and "not finished" in unfinished.text
    plain = (await hq.accepted({}, handler="record"))["correlation_id"]
    await hq.result(plain)
    no_url = await hq.client.post(f"/api/v1/requests/{plain}/callback")
    assert no_url.status_code == 409 and "no callback_url" in no_url.text
    assert (await hq.client.post("/api/v1/requests/nope/callback")).status_code == 404
    assert receiver.headers == []
