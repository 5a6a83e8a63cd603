"""What operators rely on, in the test process (tests/harness.py): readiness following the broker,
autoscaling, trace context reaching the backend. Moved from tests/e2e/test_operations.py; what
needs a process of its own (its logs, its exit, global tracing) stays there."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openhqm import OpenHQM
from openhqm.worker.autoscale import Autoscaler
from tests.harness import Sample, eventually, in_process, settings
from tests.integration.http_servers import serve
from tests.leftovers import remove_redis_queues, unique
from tests.services import require_service
from tests.tcp_proxy import CuttableProxy

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[list[dict[str, str]], str]]:
    seen: list[dict[str, str]] = []

    async def record(request: Request) -> Response:
        seen.append(dict(request.headers))
        return JSONResponse({"ok": True})

    with serve(Starlette(routes=[Route("/{path:path}", record, methods=["POST", "GET"])])) as url:
        yield seen, url


async def test_traceparent_reaches_the_backend_unchanged_when_tracing_is_off(
    tmp_path: Path, backend: tuple[list[dict[str, str]], str]
) -> None:
    seen, url = backend
    proxy: dict[str, Any] = {"enabled": True, "default_endpoint": "backend",
                             "endpoints": {"backend": {"url": f"{url}/work"}}}
    async with in_process(OpenHQM(), settings(tmp_path, proxy=proxy)) as hq:
        response = await hq.client.post("/api/v1/submit", json={"payload": {"x": 1}},
                                        headers={"Prefer": "wait=20", "traceparent": TRACEPARENT})
        assert response.json()["status"] == "COMPLETED"
    assert seen[-1]["traceparent"] == TRACEPARENT


async def test_ready_goes_503_when_the_broker_goes_away_and_back_to_200(tmp_path: Path) -> None:
    redis_url = require_service("redis")
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = CuttableProxy(host, int(port))
    await proxy.start()
    run = unique()
    queue = {"type": "redis", "redis": {"url": f"redis://127.0.0.1:{proxy.port}/0"},
             "request_queue": f"ops-{run}", "response_queue": f"ops-r-{run}"}
    try:
        async with in_process(Sample().app, settings(tmp_path, queue=queue)) as hq:
            assert (await hq.client.get("/ready")).status_code == 200
            await proxy.stop()
            ready = await hq.client.get("/ready")
            assert ready.status_code == 503
            assert "queue" in ready.json()["status"]
            await proxy.start()
            for _ in range(300):  # 30 s: generous for a loaded machine
                if (await hq.client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)  # the client reconnects on its own schedule: probe as Kubernetes does
            assert (await hq.client.get("/ready")).status_code == 200
    finally:
        await proxy.stop()
        for name in (f"ops-{run}", f"ops-r-{run}"):
            await remove_redis_queues(redis_url, name)


async def test_pool_grows_under_backlog_and_shrinks_after_it_drains(tmp_path: Path) -> None:
    config = settings(tmp_path, worker={"min_concurrency": 1, "max_concurrency": 8})
    async with in_process(Sample().app, config) as hq:
        pool = hq.runtime.pool
        assert pool is not None and isinstance(pool.autoscaler, Autoscaler)
        # The same policy, checked more often: growth and shrinking are the point, not the pace.
        pool.autoscaler.interval_s, pool.autoscaler.shrink_after_s = 0.05, 0.25
        assert pool.concurrency == 1
        for _ in range(60):
            await hq.accepted({"sleep_s": 0.25}, handler="record")
        await eventually(lambda: pool.concurrency >= 4, timeout_s=30)
        await eventually(lambda: pool.concurrency == 1, timeout_s=60)
        text = (await hq.client.get("/metrics")).text
        assert re.search(r"^openhqm_worker_concurrency 1\.0$", text, re.M), "the gauge follows the pool"
