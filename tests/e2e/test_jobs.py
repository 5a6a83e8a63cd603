"""Job control through a real `openhqm serve`: priorities, scheduling, idempotency, ordered
sessions, lifecycle events and hooks, stats."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SAMPLE_ENV
from tests.processes import OpenHQMProcess


def traces(data_dir: Path) -> list[dict[str, Any]]:
    log = data_dir / "runs.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[OpenHQMProcess]:
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(tmp_path / "runs.log"), "OPENHQM_WORKER__CONCURRENCY": "1",
           "OPENHQM_WORKER__PREFETCH": "1", "OPENHQM_TEST_HOOK_LOG": str(tmp_path / "hooks.log")}
    process = OpenHQMProcess("serve", tmp_path, env).start()
    yield process
    process.stop()


def submit(server: OpenHQMProcess, payload: Any, **metadata: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/api/v1/submit", json={"payload": payload, "metadata": metadata})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait(server: OpenHQMProcess, cid: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/api/v1/response/{cid}", params={"wait": 30}, timeout=40).json()
    return body


def test_higher_priority_runs_first_under_backlog(one_worker: OpenHQMProcess) -> None:
    blocker = submit(one_worker, {"name": "blocker", "sleep_s": 1.0}, handler="trace")
    time.sleep(0.3)  # the blocker is running; the rest queue up behind it
    ids = [submit(one_worker, {"name": name}, handler="trace", priority=name)["correlation_id"]
           for name in ("LOW", "NORMAL", "URGENT", "HIGH")]
    for cid in [blocker["correlation_id"], *ids]:
        assert wait(one_worker, cid)["status"] == "COMPLETED"
    order = [t["payload"]["name"] for t in traces(one_worker.data_dir)]
    assert order == ["blocker", "URGENT", "HIGH", "NORMAL", "LOW"]


def test_scheduled_request_is_scheduled_and_starts_no_earlier_than_asked(one_worker: OpenHQMProcess) -> None:
    submitted = time.time()
    body = submit(one_worker, {"name": "later"}, handler="trace", delay_s=1.5)
    assert body["status"] == "SCHEDULED"
    assert httpx.get(f"{one_worker.url}/api/v1/status/{body['correlation_id']}").json()["status"] == "SCHEDULED"
    assert wait(one_worker, body["correlation_id"])["status"] == "COMPLETED"
    [run] = traces(one_worker.data_dir)
    assert run["start"] >= submitted + 1.5


def test_run_at_in_the_past_runs_now_and_a_naive_time_is_refused(one_worker: OpenHQMProcess) -> None:
    body = submit(one_worker, 1, run_at="2020-01-01T00:00:00Z")
    assert wait(one_worker, body["correlation_id"])["status"] == "COMPLETED"
    refused = httpx.post(f"{one_worker.url}/api/v1/submit",
                         json={"payload": 1, "metadata": {"run_at": "2030-01-01T00:00:00"}})
    assert refused.status_code == 400 and "time zone" in refused.json()["detail"]


def test_request_not_started_before_expires_at_becomes_expired(one_worker: OpenHQMProcess) -> None:
    blocker = submit(one_worker, {"name": "blocker", "sleep_s": 1.5}, handler="trace")
    time.sleep(0.2)
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    expiring = submit(one_worker, {"name": "expiring"}, handler="trace", expires_at=soon)
    assert wait(one_worker, blocker["correlation_id"])["status"] == "COMPLETED"
    assert wait(one_worker, expiring["correlation_id"])["status"] == "EXPIRED"
    assert "expiring" not in [t["payload"]["name"] for t in traces(one_worker.data_dir)]


async def test_concurrent_repeats_of_one_idempotency_key_run_once(one_worker: OpenHQMProcess) -> None:
    payload = {"payload": {"name": "once", "sleep_s": 0.2}, "metadata": {"handler": "trace"}}
    async with httpx.AsyncClient(base_url=one_worker.url, timeout=60,
                                 limits=httpx.Limits(max_connections=50)) as client:
        responses = await asyncio.gather(*(
            client.post("/api/v1/submit", json=payload, headers={"Idempotency-Key": "order-1"}) for _ in range(1000)))
        # 202 while the original runs; a repeat after it finished gets its result (200).
        assert {r.status_code for r in responses} <= {200, 202}
        ids = {r.json()["correlation_id"] for r in responses}
        assert len(ids) == 1
        [cid] = ids
        assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 999
        done = (await client.get(f"/api/v1/response/{cid}", params={"wait": 30})).json()
        assert done["status"] == "COMPLETED"
        again = await client.post("/api/v1/submit", json=payload, headers={"Idempotency-Key": "order-1",
                                                                          "Prefer": "wait=5"})
        assert again.status_code == 200 and again.json()["correlation_id"] == cid
        conflict = await client.post("/api/v1/submit", json={**payload, "payload": {"name": "other"}},
                                     headers={"Idempotency-Key": "order-1"})
        assert conflict.status_code == 422 and "Idempotency-Key" in conflict.json()["detail"]
    assert [t["cid"] for t in traces(one_worker.data_dir)] == [cid], "the handler ran exactly once"


def test_event_stream_shows_every_transition_and_hooks_run(one_worker: OpenHQMProcess) -> None:
    body = submit(one_worker, 1, handler="fail_once", delay_s=0.5)
    cid = body["correlation_id"]
    events = []
    with httpx.stream("GET", f"{one_worker.url}/api/v1/requests/{cid}/events", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["status"] for e in events] == ["SCHEDULED", "PROCESSING", "RETRY", "PROCESSING", "COMPLETED"]
    assert events[-1]["attempts"] == 2
    hooks = (one_worker.data_dir / "hooks.log").read_text()
    assert f"completed {cid}" in hooks


def test_unknown_request_events_answer_404(one_worker: OpenHQMProcess) -> None:
    assert httpx.get(f"{one_worker.url}/api/v1/requests/nope/events").status_code == 404


def test_stats_count_states_and_report_queue_depth(one_worker: OpenHQMProcess) -> None:
    cid = submit(one_worker, 1)["correlation_id"]
    wait(one_worker, cid)
    stats = httpx.get(f"{one_worker.url}/api/v1/stats").json()
    assert stats["requests"]["COMPLETED"] >= 1
    assert stats["queues"]["openhqm-requests"]["depth"] == 0
    assert stats["finished_per_s"]["1m"] > 0
    assert stats["processing_time_ms"]["p50"] is not None


@pytest.mark.slow
async def test_each_session_runs_in_submit_order_while_sessions_run_in_parallel(tmp_path: Path) -> None:
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(tmp_path / "runs.log"), "OPENHQM_WORKER__CONCURRENCY": "8",
           "OPENHQM_ORDERING": "session"}
    server = OpenHQMProcess("serve", tmp_path, env).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            ids = []
            for i in range(20):  # in rounds, so each session's requests are submitted in a known order
                responses = await asyncio.gather(*(client.post("/api/v1/submit", json={
                    "payload": {"i": i, "sleep_s": 0.005}, "metadata": {"handler": "trace", "session_id": f"s{s}"}})
                    for s in range(50)))
                ids += [r.json()["correlation_id"] for r in responses]
            for cid in ids:
                r = await client.get(f"/api/v1/response/{cid}", params={"wait": 60})
                assert r.json()["status"] == "COMPLETED"
            session = (await client.get("/api/v1/sessions/s7")).json()
            assert len(session["requests"]) == 20
    finally:
        server.stop()
    runs = traces(tmp_path)
    assert len(runs) == 1000
    by_session: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: r["start"]):
        by_session.setdefault(run["session"], []).append(run)
    for session, session_runs in by_session.items():
        assert [r["payload"]["i"] for r in session_runs] == list(range(20)), session
        for earlier, later in itertools.pairwise(session_runs):
            assert later["start"] >= earlier["end"], f"{session}: one at a time"
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak > 1, "different sessions ran in parallel"
