"""Fan-out (`fanout.<group>`, `metadata.fanout`): one parent request, one child per member, in the
test process (tests/harness.py) against a real HTTP backend on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openhqm.backends import create_backend
from openhqm.constants import Status
from openhqm.errors import ConfigError, DeadLetter
from openhqm.listener.fanout import FanOut
from openhqm.listener.intake import Intake
from openhqm.results import RequestRecord, create_store
from openhqm.results.records import FanoutChild
from openhqm.worker.handlers import Job
from tests.harness import InProcess, Sample, in_process, settings
from tests.integration.http_servers import serve
from tests.records import new_record

CALLBACK_SECRET = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM="


@dataclass
class Backend:
    """`/flaky` answers 503 twice, then 200; `/down` always 503; `/ok` 200; `/hook` takes callbacks."""

    url: str = ""
    flaky_calls: int = 0
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    async def flaky(self, request: Request) -> Response:
        self.flaky_calls += 1
        if self.flaky_calls <= 2:
            return JSONResponse({"error": "busy"}, status_code=503)
        return JSONResponse({"from": "flaky", "calls": self.flaky_calls})

    async def ok(self, request: Request) -> Response:
        return JSONResponse({"from": "ok", "got": await request.json()})

    async def down(self, request: Request) -> Response:
        return JSONResponse({"error": "down"}, status_code=503)

    async def hook(self, request: Request) -> Response:
        self.callbacks.append(await request.json())
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route(f"/{name}", getattr(self, name), methods=["POST"])
                                 for name in ("flaky", "ok", "down", "hook")])


@pytest.fixture
def backend() -> Iterator[Backend]:
    backend = Backend()
    with serve(backend.app()) as url:
        backend.url = url
        yield backend


@dataclass
class Gate:
    """A handler that dead-letters while `failing`, then runs until the test releases it."""

    failing: bool = True
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, job: Job) -> Any:
        if self.failing:
            raise DeadLetter("the gate is shut")
        self.started.set()
        await self.release.wait()
        return {"gate": "open"}


@pytest.fixture
def sample() -> Sample:
    sample = Sample()
    sample.app.handler("gate")((gate := Gate()).run)
    sample.gate = gate  # type: ignore[attr-defined]
    return sample


def fanout_settings(tmp_path: Path, backend: Backend) -> Any:
    retry = {"max_attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}
    endpoints = {"flaky": {"url": f"{backend.url}/flaky", "retry": retry},
                 "ok": {"url": f"{backend.url}/ok"},
                 "down": {"url": f"{backend.url}/down", "retry": {"max_attempts": 2, "base_delay_s": 0.01}}}
    return settings(
        tmp_path, proxy={"enabled": True, "endpoints": endpoints},
        callbacks={"enabled": True, "secret": CALLBACK_SECRET, "allow_hosts": ["127.0.0.1"],
                   "retry": {"max_attempts": 1}},
        fanout={"both": ["endpoint:flaky", "endpoint:ok"], "one_down": ["endpoint:ok", "endpoint:down"],
                "mixed": ["handler:record", "endpoint:ok"], "gated": ["handler:gate", "endpoint:ok"],
                "together": ["handler:record", "handler:trace"]})


@pytest.fixture
async def hq(sample: Sample, backend: Backend, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(sample.app, fanout_settings(tmp_path, backend)) as running:
        yield running


async def status_of(hq: InProcess, correlation_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await hq.client.get(f"/api/v1/status/{correlation_id}")).json()
    return body


async def test_fanout_to_two_endpoints_completes_with_both_results_and_prefer_wait_returns_it(
        hq: InProcess) -> None:
    response = await hq.submit({"order": 1}, headers={"Prefer": "wait=20"}, fanout="both")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "COMPLETED"
    members = body["result"]["members"]
    assert (members["endpoint:flaky"]["status_code"], members["endpoint:flaky"]["body"]) == (
        200, {"from": "flaky", "calls": 3})
    assert members["endpoint:ok"]["body"] == {"from": "ok", "got": {"order": 1}}
    status = await status_of(hq, body["correlation_id"])
    assert [(c["member"], c["status"]) for c in status["children"]] == [
        ("endpoint:flaky", "COMPLETED"), ("endpoint:ok", "COMPLETED")]
    child = await status_of(hq, status["children"][0]["correlation_id"])
    assert (child["parent_id"], child["member"]) == (body["correlation_id"], "endpoint:flaky")


async def test_a_member_that_always_fails_fails_the_parent_keeping_the_others_result(hq: InProcess) -> None:
    cid = (await hq.accepted({"order": 2}, fanout="one_down"))["correlation_id"]
    done = await hq.result(cid)
    assert done["status"] == "FAILED"
    assert "endpoint:down" in done["error"]
    members = done["result"]["members"]
    assert members["endpoint:ok"]["body"] == {"from": "ok", "got": {"order": 2}}
    assert members["endpoint:down"]["status"] == "FAILED" and members["endpoint:down"]["error"]
    status = await status_of(hq, cid)
    assert {c["member"]: c["status"] for c in status["children"]} == {"endpoint:ok": "COMPLETED",
                                                                      "endpoint:down": "FAILED"}


async def test_unknown_group_is_refused_with_422_naming_it(hq: InProcess) -> None:
    response = await hq.submit({}, fanout="nosuch")
    assert response.status_code == 422
    assert "nosuch" in response.json()["detail"]


async def test_fanout_to_a_handler_and_an_endpoint(hq: InProcess, sample: Sample) -> None:
    response = await hq.submit({"name": "m"}, headers={"Prefer": "wait=20"}, fanout="mixed", priority=7)
    body = response.json()
    assert body["status"] == "COMPLETED", body
    assert body["result"]["members"]["handler:record"] == {"name": "m"}
    assert body["result"]["members"]["endpoint:ok"]["body"] == {"from": "ok", "got": {"name": "m"}}
    assert sample.runs and sample.runs[0].payload == {"name": "m"}


async def test_parent_callback_is_sent_once_with_the_parents_result(hq: InProcess, backend: Backend) -> None:
    cid = (await hq.accepted({"name": "cb"}, fanout="mixed", callback_url=f"{backend.url}/hook"))["correlation_id"]
    assert (await hq.result(cid))["status"] == "COMPLETED"
    async with asyncio.timeout(10):
        while not backend.callbacks:
            await asyncio.sleep(0.01)
    assert [c["correlation_id"] for c in backend.callbacks] == [cid]
    assert set(backend.callbacks[0]["result"]["members"]) == {"handler:record", "endpoint:ok"}


async def test_replaying_the_failed_childs_dead_letter_reopens_then_completes_the_parent(
        hq: InProcess, sample: Sample) -> None:
    gate: Gate = sample.gate  # type: ignore[attr-defined]
    cid = (await hq.accepted({"name": "g"}, fanout="gated"))["correlation_id"]
    assert (await hq.result(cid))["status"] == "FAILED"
    failed_child = {c["member"]: c["correlation_id"] for c in (await status_of(hq, cid))["children"]}["handler:gate"]
    dead = [d for d in (await hq.client.get("/api/v1/dlq")).json() if d["correlation_id"] == failed_child]
    assert len(dead) == 1

    gate.failing = False
    replay = await hq.client.post(f"/api/v1/dlq/{dead[0]['id']}/replay")
    assert replay.status_code == 202, replay.text
    new_child = replay.json()["correlation_id"]
    await asyncio.wait_for(gate.started.wait(), 10)
    reopened = await status_of(hq, cid)
    assert reopened["status"] == "PROCESSING"
    assert {c["member"]: c["correlation_id"] for c in reopened["children"]}["handler:gate"] == new_child

    gate.release.set()
    done = await hq.result(cid)
    assert done["status"] == "COMPLETED"
    assert done["result"]["members"]["handler:gate"] == {"gate": "open"}
    assert (await status_of(hq, new_child))["parent_id"] == cid


async def test_parent_completes_exactly_once_when_two_children_finish_together(
        hq: InProcess, sample: Sample) -> None:
    cid = (await hq.accepted({"name": "t", "hold": True}, fanout="together"))["correlation_id"]
    # Both children hold on the one `release` event of their payload's name: one set frees both.
    async with asyncio.timeout(10):
        while (await status_of(hq, cid))["status"] != "PROCESSING" or len(
                [c for c in (await status_of(hq, cid))["children"] if c["status"] == "PROCESSING"]) < 2:
            await asyncio.sleep(0.01)
    sample.event("release", "t").set()
    assert (await hq.result(cid))["status"] == "COMPLETED"
    children = [c["correlation_id"] for c in (await status_of(hq, cid))["children"]]
    async with asyncio.timeout(10):  # hooks run as the records move; both children's have fired
        while not set(children) <= set(sample.completed_hooks):
            await asyncio.sleep(0.01)
    assert sample.completed_hooks.count(cid) == 1


async def test_cancelling_the_parent_cancels_its_children(hq: InProcess, sample: Sample) -> None:
    cid = (await hq.accepted({"name": "c", "hold": True}, fanout="together"))["correlation_id"]
    assert (await hq.client.delete(f"/api/v1/requests/{cid}")).status_code == 200
    status = await status_of(hq, cid)
    assert status["status"] == "CANCELLED"
    async with asyncio.timeout(10):
        while {c["status"] for c in (await status_of(hq, cid))["children"]} != {"CANCELLED"}:
            await asyncio.sleep(0.01)


async def test_a_bulk_cancel_of_the_parent_cancels_its_children_too(hq: InProcess, sample: Sample) -> None:
    cid = (await hq.accepted({"name": "b", "hold": True}, fanout="together"))["correlation_id"]
    outcome = (await hq.client.post("/api/v1/requests/cancel", json={"ids": [cid]})).json()
    assert (outcome["matched"], outcome["done"]) == (1, 1)
    async with asyncio.timeout(10):
        while {c["status"] for c in (await status_of(hq, cid))["children"]} != {"CANCELLED"}:
            await asyncio.sleep(0.01)


async def test_a_handler_member_no_handler_answers_stops_the_runtime_from_starting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="handler:nosuch"):
        async with in_process(Sample().app, settings(tmp_path, fanout={"g": ["handler:nosuch"]})):
            pass


async def test_an_idempotency_key_applies_to_the_parent(hq: InProcess, sample: Sample) -> None:
    key = {"Idempotency-Key": "fan-1"}
    first = await hq.submit({"name": "i"}, headers=key, fanout="mixed")
    again = await hq.submit({"name": "i"}, headers=key, fanout="mixed")
    assert first.status_code in (200, 202) and again.status_code in (200, 202)
    cid = first.json()["correlation_id"]
    assert again.json()["correlation_id"] == cid and again.headers["Idempotent-Replayed"] == "true"
    assert (await hq.result(cid))["status"] == "COMPLETED"
    assert len((await status_of(hq, cid))["children"]) == 2
    assert len(sample.runs) == 1, "the repeat queued no second set of children"


async def test_two_listeners_settling_one_parent_at_once_complete_it_exactly_once(tmp_path: Path) -> None:
    """Two listener replicas (two store objects on one SQLite file) each stored one child's end and
    settle the parent at the same moment: one transition wins, one callback is sent."""
    config = settings(tmp_path)
    stores = [create_store(config), create_store(config)]
    for store in stores:
        await store.connect()
    try:
        finished: list[RequestRecord] = []
        replicas = [FanOut({}, Intake(config, create_backend(config), store), store, finished.append)
                    for store in stores]
        children = [msgspec.structs.replace(new_record(), member=m, status=Status.COMPLETED, result={"m": m})
                    for m in ("handler:a", "handler:b")]
        parent = msgspec.structs.replace(new_record(), status=Status.PROCESSING, children=[
            FanoutChild(member=str(c.member), correlation_id=c.correlation_id) for c in children])
        await stores[0].create(parent)
        for child in children:
            await stores[0].create(msgspec.structs.replace(child, parent_id=parent.correlation_id))
        outcomes = await asyncio.gather(*(replica.settle(parent.correlation_id) for replica in replicas))
        assert sum(outcome is not None for outcome in outcomes) == 1
        assert len(finished) == 1 and finished[0].status == Status.COMPLETED
        assert finished[0].result == {"members": {"handler:a": {"m": "handler:a"}, "handler:b": {"m": "handler:b"}}}
    finally:
        for store in stores:
            await store.close()


async def test_replaying_a_finished_parent_replays_only_its_failed_members(hq: InProcess, sample: Sample) -> None:
    gate: Gate = sample.gate  # type: ignore[attr-defined]
    cid = (await hq.accepted({"name": "p"}, fanout="gated"))["correlation_id"]
    assert (await hq.result(cid))["status"] == "FAILED"
    before = {c["member"]: c["correlation_id"] for c in (await status_of(hq, cid))["children"]}

    gate.failing, gate.release = False, asyncio.Event()
    gate.release.set()
    replay = await hq.client.post(f"/api/v1/requests/{cid}/replay")
    assert replay.status_code == 202, replay.text
    assert replay.json()["correlation_id"] == cid
    done = await hq.result(cid)
    assert done["status"] == "COMPLETED"
    after = {c["member"]: c["correlation_id"] for c in (await status_of(hq, cid))["children"]}
    assert after["endpoint:ok"] == before["endpoint:ok"], "the completed member is not run again"
    assert after["handler:gate"] != before["handler:gate"]
    assert (await status_of(hq, after["handler:gate"]))["replayed_from"] == before["handler:gate"]
    assert done["result"]["members"]["handler:gate"] == {"gate": "open"}

    again = await hq.client.post(f"/api/v1/requests/{cid}/replay")
    assert again.status_code == 409 and "nothing to replay" in again.json()["detail"]


async def test_replaying_a_finished_failed_child_reopens_its_parent(hq: InProcess, sample: Sample) -> None:
    gate: Gate = sample.gate  # type: ignore[attr-defined]
    cid = (await hq.accepted({"name": "q"}, fanout="gated"))["correlation_id"]
    assert (await hq.result(cid))["status"] == "FAILED"
    failed = {c["member"]: c["correlation_id"] for c in (await status_of(hq, cid))["children"]}["handler:gate"]
    gate.failing = False
    gate.release.set()
    replay = await hq.client.post(f"/api/v1/requests/{failed}/replay")
    assert replay.status_code == 202, replay.text
    assert (await hq.result(cid))["status"] == "COMPLETED"
    assert {c["member"]: c["correlation_id"] for c in (await status_of(hq, cid))["children"]}[
        "handler:gate"] == replay.json()["correlation_id"]
