"""One error format: every 4xx and 5xx of the bridge is RFC 9457 problem details
(`application/problem+json`: type, title, status, detail; `errors` for field-level validation)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openhqm import AsyncClient
from openhqm.client import ClientError
from openhqm.http.app import create_app
from tests.harness import InProcess, Sample, in_process, served, settings
from tests.leftovers import remove_redis_queues, unique
from tests.services import require_service
from tests.tcp_proxy import CuttableProxy

KEYS = {"reader": "key-of-a-reader", "writer": "key-of-a-writer"}
AUTH = {"api_keys": [
    {"name": "reader", "key_sha256": hashlib.sha256(KEYS["reader"].encode()).hexdigest(), "scopes": ["read"]},
    {"name": "writer", "key_sha256": hashlib.sha256(KEYS["writer"].encode()).hexdigest(),
     "scopes": ["submit", "read"]}]}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body, after checking it is problem details for `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "about:blank" and body["status"] == status and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture
async def hq(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(Sample().app, settings(tmp_path, auth=AUTH), workers=False) as running:
        yield running


def as_client(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


async def test_validation_errors_name_each_location_in_errors_and_in_detail(hq: InProcess) -> None:
    answer = await hq.client.post("/api/v1/submit", headers=as_client("writer"),
                                  json={"payload": 1, "metadata": {"priority": "SOMETIMES", "timeout_s": -1}})
    body = problem(answer, 422)
    locations = [error["loc"] for error in body["errors"]]
    assert ["body", "metadata", "priority"] in locations and ["body", "metadata", "timeout_s"] in locations
    assert all(error["msg"] and error["type"] for error in body["errors"])
    assert "body.metadata.priority" in body["detail"] and "SOMETIMES" in body["detail"]


async def test_query_validation_and_framework_errors_are_problem_details(hq: InProcess) -> None:
    reader = as_client("reader")
    body = problem(await hq.client.get("/api/v1/response/some-id", params={"wait": "soon"}, headers=reader), 422)
    assert body["errors"][0]["loc"] == ["query", "wait"]
    assert "/api/v1/nowhere" in problem(await hq.client.get("/api/v1/nowhere", headers=reader), 404)["detail"]
    not_allowed = await hq.client.put("/health")
    assert "PUT /health" in problem(not_allowed, 405)["detail"] and not_allowed.headers["allow"] == "GET"


async def test_bridge_refusals_are_problem_details(hq: InProcess) -> None:
    writer = as_client("writer")
    assert "recrod" in problem(await hq.submit(1, handler="recrod", headers=writer), 400)["detail"]
    assert "unknown-id" in problem(await hq.client.get("/api/v1/status/unknown-id", headers=writer), 404)["detail"]
    too_big = await hq.client.post("/api/v1/submit", headers=writer, json={"payload": "x" * 10_000})
    assert "max_body_bytes" in problem(too_big, 413)["detail"]


async def test_missing_credentials_and_missing_scope_are_problem_details(hq: InProcess) -> None:
    unauthorized = await hq.client.post("/api/v1/submit", json={"payload": 1})
    assert problem(unauthorized, 401)["detail"] == "missing or invalid credentials"
    assert unauthorized.headers["www-authenticate"].startswith("Bearer")
    forbidden = await hq.client.post("/api/v1/submit", json={"payload": 1}, headers=as_client("reader"))
    assert "'submit'" in problem(forbidden, 403)["detail"]


async def test_an_unexpected_error_answers_500_without_its_internals(tmp_path: Path) -> None:
    sample = Sample()
    sample.app.settings = settings(tmp_path)
    api = create_app(sample.app)

    async def broken() -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    # A test-only route: the bridge has no way to fail unexpectedly on purpose. No lifespan: the
    # route needs no runtime.
    api.add_api_route("/broken", broken)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://openhqm.test") as client:
        answer = await client.get("/broken")
    body = problem(answer, 500)
    assert "hunter2" not in answer.text and "RuntimeError" not in answer.text
    assert body["title"] == "Internal Server Error"


async def test_broker_down_answers_503_problem_with_retry_after(tmp_path: Path) -> None:
    redis_url = require_service("redis")
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = CuttableProxy(host, int(port))
    await proxy.start()
    run = unique()
    queue = {"type": "redis", "redis": {"url": f"redis://127.0.0.1:{proxy.port}/0"},
             "request_queue": f"pd-{run}", "response_queue": f"pd-r-{run}"}
    try:
        async with in_process(Sample().app, settings(tmp_path, queue=queue), workers=False) as running:
            await proxy.stop()
            answer = await running.submit(1)
            body = problem(answer, 503)
            assert body["detail"].startswith("broker or store unavailable: ") and body["reason"] == "unavailable"
            assert answer.headers["retry-after"] == "5"
    finally:
        await proxy.stop()
        for name in (f"pd-{run}", f"pd-r-{run}"):
            await remove_redis_queues(redis_url, name)


async def test_python_client_errors_carry_the_problems_status_and_detail(tmp_path: Path) -> None:
    with served(Sample().app, settings(tmp_path), workers=False) as url:
        async with AsyncClient(url) as client:
            with pytest.raises(ClientError) as refused:
                await client.submit(1, priority="SOMETIMES")
    assert refused.value.status_code == 422
    assert isinstance(refused.value.detail, str) and "priority" in refused.value.detail
    assert "SOMETIMES" in str(refused.value)
