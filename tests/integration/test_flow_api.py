"""GET /api/v1/flow through the in-process app: a request held by a real HTTP backend on 127.0.0.1
counts in flight on its limit, the next one of the same tenant counts waiting, by key, and the
gauges the listener samples agree."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openhqm import OpenHQM
from openhqm.metrics import REGISTRY
from tests.harness import InProcess, Sample, eventually, in_process, settings
from tests.integration.forward_backend import Backend
from tests.integration.http_servers import serve


@pytest.fixture
def backend() -> Iterator[Backend]:
    backend = Backend()
    with serve(backend.app) as url:
        backend.url = url
        yield backend
        backend.gate_open.set()  # let a call still held go, so the server can stop


async def flow_until(hq: InProcess, condition: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            response = await hq.client.get("/api/v1/flow")
            assert response.status_code == 200, response.text
            [limit] = response.json()["limits"]
            if condition(limit):
                return dict(limit)
            await asyncio.sleep(0.02)  # polled as the console does: the figures are a reading, not an event


# memory: in `serve` the listener reads the workers' own ledger, the only one that sees them
@pytest.mark.parametrize("store", ["sqlite", "memory"])
async def test_a_held_call_counts_in_flight_and_the_next_of_its_tenant_counts_waiting(
        backend: Backend, tmp_path: Path, store: str) -> None:
    config = settings(tmp_path, results={"type": store},
                      proxy={"enabled": True, "endpoints": {"api": {"url": backend.url + "/gate"}}},
                      flow={"limits": {"per-tenant": {"endpoint": "api", "key": "metadata.tenant",
                                                      "max_concurrency": 1}}})
    async with in_process(OpenHQM(), config) as hq:
        first = (await hq.accepted({"n": 1}, endpoint="api", tenant="acme"))["correlation_id"]
        await asyncio.to_thread(backend.gate_reached.wait, 10)
        second = (await hq.accepted({"n": 2}, endpoint="api", tenant="acme"))["correlation_id"]
        limit = await flow_until(hq, lambda limit: limit["waiting"] >= 1)
        assert limit["in_flight"] >= 1 and limit["keys"] == 1
        assert {k: limit[k] for k in ("name", "endpoint", "handler", "key", "rate_per_s", "burst", "max_concurrency",
                                      "reserved_until")} == {
            "name": "per-tenant", "endpoint": "api", "handler": None, "key": "metadata.tenant", "rate_per_s": None,
            "burst": None, "max_concurrency": 1, "reserved_until": None}
        assert limit["top_keys"] == [{"key": "acme", "waiting": 1, "in_flight": 1}]
        assert REGISTRY.get_sample_value("openhqm_flow_in_flight", {"limit": "per-tenant"}) == 1
        assert REGISTRY.get_sample_value("openhqm_flow_waiting", {"limit": "per-tenant"}) == 1
        backend.gate_open.set()
        results = [await hq.result(cid) for cid in (first, second)]
        assert [r["status"] for r in results] == ["COMPLETED", "COMPLETED"]
        limit = await flow_until(hq, lambda limit: limit["in_flight"] == 0)
        assert (limit["waiting"], limit["top_keys"]) == (0, [])


async def test_a_rate_limit_of_an_endpoint_shows_how_far_its_reservations_run(
        backend: Backend, tmp_path: Path) -> None:
    backend.gate_open.set()  # calls pass at once: only the rate holds them
    endpoint = {"url": backend.url + "/gate", "rate_limit_per_s": 0.2, "rate_burst": 1}
    config = settings(tmp_path, proxy={"enabled": True, "endpoints": {"api": endpoint}})
    async with in_process(OpenHQM(), config) as hq:
        await hq.accepted({"n": 1}, endpoint="api")
        await hq.accepted({"n": 2}, endpoint="api")  # waits 5 s for its token
        limit = await flow_until(hq, lambda limit: limit["waiting"] == 1)
    assert (limit["name"], limit["endpoint"], limit["rate_per_s"], limit["burst"]) == ("endpoint.api", "api", 0.2, 1)
    assert limit["reserved_until"] is not None and limit["top_keys"] == []


async def test_without_limits_the_list_is_empty(tmp_path: Path) -> None:
    async with in_process(OpenHQM(), settings(tmp_path), workers=False) as hq:
        response = await hq.client.get("/api/v1/flow")
    assert (response.status_code, response.json()) == (200, {"limits": []})


async def test_the_listeners_sampling_keeps_the_gauges_current_while_nothing_asks_the_limit(tmp_path: Path) -> None:
    sample = Sample()
    flow = {"limits": {"sampled": {"handler": "record", "max_concurrency": 1}}}

    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"limit": "sampled"})

    async with in_process(sample.app, settings(tmp_path, flow=flow)) as hq:
        assert hq.runtime.bridge is not None
        sampling = asyncio.create_task(hq.runtime.bridge.sample_metrics_forever(interval_s=0.05))
        try:
            held = (await hq.accepted({"name": "held", "hold": True}, handler="record"))["correlation_id"]
            await asyncio.wait_for(sample.event("started", "held").wait(), 10)
            await eventually(lambda: gauge("openhqm_flow_in_flight") == 1)
            sample.event("release", "held").set()
            assert (await hq.result(held))["status"] == "COMPLETED"
            # no worker asks the limit again: only the sampling can see the slot freed
            await eventually(lambda: gauge("openhqm_flow_in_flight") == 0)
            assert gauge("openhqm_flow_waiting") == 0
        finally:
            sampling.cancel()
