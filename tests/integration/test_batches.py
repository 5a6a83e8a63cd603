"""Batch handlers (in-process, SQLite): requests gathered into one call, each settled on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openhqm import OpenHQM
from openhqm.errors import ConfigError
from openhqm.worker.handlers import Job
from tests.harness import in_process, settings
from tests.integration.http_servers import serve


async def submit_all(hq: Any, payloads: list[Any], handler: str, **metadata: Any) -> list[str]:
    if handler:
        metadata["handler"] = handler
    bodies = await asyncio.gather(*(hq.accepted(p, **metadata) for p in payloads))
    return [body["correlation_id"] for body in bodies]


async def test_a_poisoned_item_fails_alone_and_the_others_get_their_own_results(tmp_path: Path) -> None:
    app = OpenHQM()
    calls: list[list[int]] = []

    @app.handler("double", batch_size=5, batch_wait_s=0.2)
    async def double(jobs: list[Job]) -> list[Any]:
        calls.append([job.attempt for job in jobs])
        return [ValueError("poisoned") if job.payload == 3 else job.payload * 2 for job in jobs]

    async with in_process(app, settings(tmp_path, worker={"retry": {"max_attempts": 2}})) as hq:
        ids = await submit_all(hq, list(range(5)), "double")
        results = [await hq.result(cid) for cid in ids]
        dead = (await hq.client.get("/api/v1/dlq")).json()
    for n, (cid, result) in enumerate(zip(ids, results, strict=True)):
        assert result["correlation_id"] == cid
        if n == 3:
            assert (result["status"], result["attempts"]) == ("FAILED", 2), result
            assert "ValueError: poisoned" in result["error"]
        else:
            assert (result["status"], result["result"], result["attempts"]) == ("COMPLETED", n * 2, 1), result
    assert [d["correlation_id"] for d in dead] == [ids[3]]
    assert sum(len(call) for call in calls) == 6  # five first attempts, one retry of the poisoned one


async def test_a_raised_exception_retries_every_request_of_the_batch(tmp_path: Path) -> None:
    app = OpenHQM()

    @app.handler("shaky", batch_size=4, batch_wait_s=0.2)
    def shaky(jobs: list[Job]) -> list[Any]:  # a sync batch handler: runs in a thread
        if any(job.attempt == 1 for job in jobs):
            raise RuntimeError("backend hiccup")
        return [{"n": job.payload, "attempt": job.attempt} for job in jobs]

    async with in_process(app, settings(tmp_path, worker={"retry": {"max_attempts": 3}})) as hq:
        ids = await submit_all(hq, list(range(4)), "shaky")
        results = [await hq.result(cid) for cid in ids]
        details = [(await hq.client.get(f"/api/v1/requests/{cid}")).json() for cid in ids]
    for n, (result, detail) in enumerate(zip(results, details, strict=True)):
        assert result["status"] == "COMPLETED", result
        assert result["result"]["n"] == n and result["attempts"] >= 2
        assert "RuntimeError: backend hiccup" in detail["attempt_history"][0]["error"]


async def test_batches_form_when_requests_arrive_together(tmp_path: Path) -> None:
    app = OpenHQM()
    sizes: list[int] = []

    @app.handler("count", batch_size=5, batch_wait_s=0.5)
    async def count(jobs: list[Job]) -> list[Any]:
        sizes.append(len(jobs))
        return [job.correlation_id for job in jobs]

    async with in_process(app, settings(tmp_path)) as hq:
        ids = await submit_all(hq, list(range(10)), "count")
        results = [await hq.result(cid) for cid in ids]
    assert [r["result"] for r in results] == ids  # each request keeps its own correlation id and result
    assert sum(sizes) == 10 and max(sizes) > 1 and max(sizes) <= 5


async def test_a_wrong_length_answer_fails_each_request_naming_the_lengths(tmp_path: Path) -> None:
    app = OpenHQM()

    @app.handler("short", batch_size=3, batch_wait_s=0.2)
    async def short(jobs: list[Job]) -> list[Any]:
        return [1]

    async with in_process(app, settings(tmp_path, worker={"retry": {"max_attempts": 1}})) as hq:
        ids = await submit_all(hq, [1, 2, 3], "short")
        results = [await hq.result(cid) for cid in ids]
    for result in results:
        assert result["status"] == "FAILED"
        assert "returned 1 results for a batch of" in result["error"], result


@pytest.mark.parametrize(("options", "named"), [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
    ({"batch_wait_s": 0}, "batch_wait_s"), ({"batch_size": 10, "batch_wait_s": -1}, "batch_wait_s"),
])
def test_batch_settings_that_cannot_form_a_batch_are_refused(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        OpenHQM().handler("bad", **options)(lambda jobs: jobs)


# --- endpoint batches: one POST with a JSON array, one element back per request -------------------


class ArrayBackend:
    """/times10 answers each element times ten; /short one element too few; /broken HTTP 500."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    async def any(self, request: Request) -> Response:
        batch = orjson.loads(await request.body())
        self.batches.append(batch)
        if request.url.path == "/broken":
            return Response(b"oops", status_code=500)
        answer = [n * 10 for n in batch]
        if request.url.path == "/short":
            answer = answer[:-1]
        return Response(orjson.dumps(answer), media_type="application/json")


@pytest.fixture(scope="module")
def array_backend() -> Iterator[tuple[ArrayBackend, str]]:
    recorder = ArrayBackend()
    with serve(Starlette(routes=[Route("/{path:path}", recorder.any, methods=["POST"])])) as url:
        yield recorder, url


def batched(tmp_path: Path, url: str, path: str, max_attempts: int = 1) -> Any:
    endpoint = {"url": url + path, "batch": {"max_size": 4, "max_wait_s": 0.3},
                "retry": {"max_attempts": max_attempts, "base_delay_s": 0.01, "max_delay_s": 0.02}}
    return settings(tmp_path, proxy={"enabled": True, "endpoints": {"batched": endpoint},
                                     "default_endpoint": "batched"})


async def test_an_endpoint_batch_is_one_post_of_an_array_and_each_request_gets_its_element(
    tmp_path: Path, array_backend: tuple[ArrayBackend, str]
) -> None:
    recorder, url = array_backend
    before = len(recorder.batches)
    async with in_process(OpenHQM(), batched(tmp_path, url, "/times10")) as hq:
        ids = await submit_all(hq, [1, 2, 3, 4, 5, 6, 7, 8], "", endpoint="batched")
        results = [await hq.result(cid) for cid in ids]
    for n, result in enumerate(results, start=1):
        assert result["status"] == "COMPLETED", result
        assert (result["result"]["status_code"], result["result"]["body"]) == (200, n * 10)
    sent = recorder.batches[before:]
    assert sorted(x for batch in sent for x in batch) == list(range(1, 9))
    assert max(len(batch) for batch in sent) > 1 and max(len(batch) for batch in sent) <= 4


@pytest.mark.parametrize(("path", "error"), [
    ("/short", "with an array of"), ("/broken", "HTTP 500"),
])
async def test_an_endpoint_batch_answered_wrongly_is_one_failed_attempt_for_each_request(
    tmp_path: Path, array_backend: tuple[ArrayBackend, str], path: str, error: str
) -> None:
    _, url = array_backend
    async with in_process(OpenHQM(), batched(tmp_path, url, path, max_attempts=2)) as hq:
        ids = await submit_all(hq, [1, 2, 3], "", endpoint="batched")
        results = [await hq.result(cid) for cid in ids]
        details = [(await hq.client.get(f"/api/v1/requests/{cid}")).json() for cid in ids]
    for result, detail in zip(results, details, strict=True):
        assert (result["status"], result["attempts"]) == ("FAILED", 2), result
        assert error in result["error"], result
        assert [error in attempt["error"] for attempt in detail["attempt_history"]] == [True, True]
