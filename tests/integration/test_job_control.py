"""Job control in the test process (tests/harness.py), on the embedded SQLite queue and the memory
queue: priorities, scheduling, expiry, idempotency, ordered sessions, lifecycle events and hooks,
stats. Moved from tests/e2e/test_jobs.py: no process boundary is involved in any of them."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openhqm.timefmt import rfc3339
from tests.harness import InProcess, Sample, in_process, settings


@pytest.fixture(params=["sqlite", "memory"])
def queue_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sample() -> Sample:
    return Sample()


@pytest.fixture
async def one_worker(sample: Sample, queue_type: str, tmp_path: Path) -> AsyncIterator[InProcess]:
    """One job at a time, nothing fetched ahead: what runs next is the queue's choice alone."""
    config = settings(tmp_path, queue={"type": queue_type}, worker={"concurrency": 1, "prefetch": 1})
    async with in_process(sample.app, config) as hq:
        yield hq


async def hold_a_blocker(hq: InProcess, sample: Sample) -> dict[str, Any]:
    """Occupy the only worker slot until the test releases `blocker`; returns once it runs."""
    blocker = await hq.accepted({"name": "blocker", "hold": True}, handler="trace")
    await asyncio.wait_for(sample.event("started", "blocker").wait(), 10)
    return blocker


async def test_higher_priority_runs_first_under_backlog(one_worker: InProcess, sample: Sample) -> None:
    blocker = await hold_a_blocker(one_worker, sample)
    ids = [(await one_worker.accepted({"name": name}, handler="trace", priority=name))["correlation_id"]
           for name in ("LOW", "NORMAL", "URGENT", "HIGH")]
    sample.event("release", "blocker").set()
    for cid in [blocker["correlation_id"], *ids]:
        assert (await one_worker.result(cid))["status"] == "COMPLETED"
    assert [run.name for run in sample.runs] == ["blocker", "URGENT", "HIGH", "NORMAL", "LOW"]


async def test_scheduled_request_is_scheduled_and_starts_no_earlier_than_asked(
    one_worker: InProcess, sample: Sample
) -> None:
    submitted = time.time()
    body = await one_worker.accepted({"name": "later"}, handler="trace", delay_s=0.5)
    assert body["status"] == "SCHEDULED"
    status = await one_worker.client.get(f"/api/v1/status/{body['correlation_id']}")
    assert status.json()["status"] == "SCHEDULED"
    assert (await one_worker.result(body["correlation_id"]))["status"] == "COMPLETED"
    [run] = sample.runs
    assert run.start >= submitted + 0.5


async def test_run_at_in_the_past_runs_now_and_a_naive_time_is_refused(one_worker: InProcess) -> None:
    body = await one_worker.accepted(1, run_at="2020-01-01T00:00:00Z")
    assert (await one_worker.result(body["correlation_id"]))["status"] == "COMPLETED"
    refused = await one_worker.submit(1, run_at="2030-01-01T00:00:00")
    assert refused.status_code == 400 and "time zone" in refused.json()["detail"]


async def test_request_not_started_before_expires_at_becomes_expired(one_worker: InProcess, sample: Sample) -> None:
    blocker = await hold_a_blocker(one_worker, sample)
    soon = time.time() + 0.3
    expiring = await one_worker.accepted({"name": "expiring"}, handler="trace", expires_at=rfc3339(soon))
    while time.time() <= soon:  # the state this test needs is a moment in time: hold the slot past it
        await asyncio.sleep(soon - time.time() + 0.01)
    sample.event("release", "blocker").set()
    assert (await one_worker.result(blocker["correlation_id"]))["status"] == "COMPLETED"
    assert (await one_worker.result(expiring["correlation_id"]))["status"] == "EXPIRED"
    assert "expiring" not in [run.name for run in sample.runs]


async def test_concurrent_repeats_of_one_idempotency_key_run_once(one_worker: InProcess, sample: Sample) -> None:
    payload = {"payload": {"name": "once", "sleep_s": 0.2}, "metadata": {"handler": "trace"}}
    client = one_worker.client
    responses = await asyncio.gather(*(
        client.post("/api/v1/submit", json=payload, headers={"Idempotency-Key": "order-1"}) for _ in range(1000)))
    # 202 while the original runs; a repeat after it finished gets its result (200).
    assert {r.status_code for r in responses} <= {200, 202}
    ids = {r.json()["correlation_id"] for r in responses}
    assert len(ids) == 1
    [cid] = ids
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 999
    assert (await one_worker.result(cid))["status"] == "COMPLETED"
    again = await client.post("/api/v1/submit", json=payload, headers={"Idempotency-Key": "order-1",
                                                                      "Prefer": "wait=5"})
    assert again.status_code == 200 and again.json()["correlation_id"] == cid
    conflict = await client.post("/api/v1/submit", json={**payload, "payload": {"name": "other"}},
                                 headers={"Idempotency-Key": "order-1"})
    assert conflict.status_code == 422 and "Idempotency-Key" in conflict.json()["detail"]
    assert [run.correlation_id for run in sample.runs] == [cid], "the handler ran exactly once"


async def test_event_stream_shows_every_transition_and_hooks_run(one_worker: InProcess, sample: Sample) -> None:
    cid = (await one_worker.accepted(1, handler="fail_once", delay_s=0.2))["correlation_id"]
    # ASGITransport hands the stream over once it ends, which it does at the terminal state.
    response = await one_worker.client.get(f"/api/v1/requests/{cid}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["status"] for e in events] == ["SCHEDULED", "PROCESSING", "RETRY", "PROCESSING", "COMPLETED"]
    assert events[-1]["attempts"] == 2
    assert cid in sample.completed_hooks


async def test_unknown_request_events_answer_404(one_worker: InProcess) -> None:
    assert (await one_worker.client.get("/api/v1/requests/nope/events")).status_code == 404


async def test_stats_count_states_and_report_queue_depth(one_worker: InProcess) -> None:
    cid = (await one_worker.accepted(1))["correlation_id"]
    await one_worker.result(cid)
    stats = (await one_worker.client.get("/api/v1/stats")).json()
    assert stats["requests"]["COMPLETED"] >= 1
    assert stats["queues"]["openhqm-requests"]["depth"] == 0
    assert stats["finished_per_s"]["1m"] > 0
    assert stats["processing_time_ms"]["p50"] is not None


@pytest.mark.slow
async def test_each_session_runs_in_submit_order_while_sessions_run_in_parallel(
    sample: Sample, queue_type: str, tmp_path: Path
) -> None:
    config = settings(tmp_path, queue={"type": queue_type}, worker={"concurrency": 8}, ordering="session")
    async with in_process(sample.app, config) as hq:
        client: httpx.AsyncClient = hq.client
        ids = []
        for i in range(20):  # in rounds, so each session's requests are submitted in a known order
            responses = await asyncio.gather(*(client.post("/api/v1/submit", json={
                "payload": {"i": i, "sleep_s": 0.005}, "metadata": {"handler": "trace", "session_id": f"s{s}"}})
                for s in range(50)))
            ids += [r.json()["correlation_id"] for r in responses]
        for cid in ids:
            assert (await hq.result(cid, 60))["status"] == "COMPLETED"
        session = (await client.get("/api/v1/sessions/s7")).json()
        assert len(session["requests"]) == 20
    runs = sample.runs
    assert len(runs) == 1000
    by_session: dict[str | None, list[Any]] = {}
    for run in sorted(runs, key=lambda r: r.start):
        by_session.setdefault(run.session_id, []).append(run)
    for session_id, session_runs in by_session.items():
        assert [r.payload["i"] for r in session_runs] == list(range(20)), session_id
        for earlier, later in itertools.pairwise(session_runs):
            assert later.start >= earlier.end, f"{session_id}: one at a time"
    events = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak > 1, "different sessions ran in parallel"
