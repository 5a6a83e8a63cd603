"""Flow limits in one process (the in-process harness, SQLite store): a waiting request's status,
the concurrency slot freed whatever the outcome, fairness between keys, and the metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from openhqm.metrics import REGISTRY
from openhqm.timefmt import parse_rfc3339
from tests.harness import InProcess, Sample, in_process, settings


@pytest.fixture
def sample() -> Sample:
    return Sample()


def limits(**named: dict[str, Any]) -> dict[str, Any]:
    return {"limits": named}


async def status_until(hq: InProcess, correlation_id: str, condition: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            status: dict[str, Any] = (await hq.client.get(f"/api/v1/status/{correlation_id}")).json()
            if condition(status):
                return status
            await asyncio.sleep(0.01)  # the status is polled as a client would


def sample_value(name: str, limit: str) -> float:
    return REGISTRY.get_sample_value(name, {"limit": limit}) or 0.0


async def test_a_request_over_its_rate_waits_pending_on_the_limit_and_then_runs_once(
        sample: Sample, tmp_path: Path) -> None:
    deferred_before = sample_value("openhqm_flow_deferred_total", "slow")
    flow = limits(slow={"handler": "record", "rate_per_s": 0.25})  # burst 1: the second waits 4 s
    async with in_process(sample.app, settings(tmp_path, flow=flow)) as hq:
        first = (await hq.accepted({"name": "first"}, handler="record"))["correlation_id"]
        second = (await hq.accepted({"name": "second"}, handler="record"))["correlation_id"]
        status = await status_until(hq, second, lambda s: s["waiting_on"] == "limit:slow")
        assert (status["status"], status["attempts"]) == ("PENDING", 0)
        assert parse_rfc3339(status["next_attempt_at"]) > time.time()
        assert sample_value("openhqm_flow_waiting", "slow") == 1
        results = [await hq.result(cid) for cid in (first, second)]
    assert [(r["status"], r["attempts"]) for r in results] == [("COMPLETED", 1), ("COMPLETED", 1)]
    assert sample.ran(second) == 1  # deferred once for its token, then run: no retry, no busy loop
    assert sample_value("openhqm_flow_deferred_total", "slow") == deferred_before + 1
    assert sample_value("openhqm_flow_waiting", "slow") == 0


async def test_a_concurrency_slot_waits_for_the_running_request_and_is_freed_when_it_ends(
        sample: Sample, tmp_path: Path) -> None:
    flow = limits(one={"handler": "record", "max_concurrency": 1})
    async with in_process(sample.app, settings(tmp_path, flow=flow)) as hq:
        first = (await hq.accepted({"name": "a", "hold": True}, handler="record"))["correlation_id"]
        await asyncio.wait_for(sample.event("started", "a").wait(), 10)
        second = (await hq.accepted({"name": "b"}, handler="record"))["correlation_id"]
        status = await status_until(hq, second, lambda s: s["waiting_on"] == "limit:one")
        assert status["status"] == "PENDING" and sample.ran(second) == 0
        sample.event("release", "a").set()
        results = [await hq.result(cid) for cid in (first, second)]
    assert [r["status"] for r in results] == ["COMPLETED", "COMPLETED"]


async def test_a_failing_request_frees_its_slot(sample: Sample, tmp_path: Path) -> None:
    flow = limits(one={"handler": "give_up", "max_concurrency": 1})
    async with in_process(sample.app, settings(tmp_path, flow=flow)) as hq:
        ids = [(await hq.accepted({}, handler="give_up"))["correlation_id"] for _ in range(3)]
        results = [await hq.result(cid) for cid in ids]
    assert [r["status"] for r in results] == ["FAILED"] * 3


async def test_a_key_with_a_big_backlog_does_not_hold_back_another_keys_requests(
        sample: Sample, tmp_path: Path) -> None:
    # Key a: 100 requests at 10/s is a 10 s backlog, submitted first. Key b's 5 requests need 0.4 s
    # of their own bucket: each a request is deferred once, republished for its own reserved time,
    # so b's requests are not queued behind a's reservations.
    flow = limits(tenant={"handler": "record", "key": "metadata.tenant", "rate_per_s": 10, "burst": 1})
    async with in_process(sample.app, settings(tmp_path, flow=flow)) as hq:
        for n in range(100):
            await hq.accepted({"name": f"a{n}"}, handler="record", tenant="a")
        b_ids = [(await hq.accepted({"name": f"b{n}"}, handler="record", tenant="b"))["correlation_id"]
                 for n in range(5)]
        b_results = [await hq.result(cid) for cid in b_ids]
        a_done = sum(run.name.startswith("a") for run in sample.runs)
    assert [r["status"] for r in b_results] == ["COMPLETED"] * 5
    assert a_done < 50, f"b finished only after {a_done} of a's 100 requests"
