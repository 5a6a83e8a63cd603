"""The operator console's request API in the test process (tests/harness.py): keyset pages while
requests arrive, filters and counts, the detail with masked headers and its attempt history against
a real backend on 127.0.0.1, replay, bulk actions, client isolation and bad input."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness import InProcess, Sample, in_process, settings
from tests.integration.http_servers import serve

CANARY = "canary-token-0123456789"


async def pages(hq: InProcess, limit: int, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        body = (await hq.client.get("/api/v1/requests", params=query)).json()
        ids += [item["correlation_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("paging did not end")


async def test_pages_have_no_duplicates_or_gaps_while_new_requests_arrive(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        first_ids = [(await hq.accepted({"n": i}, handler="record"))["correlation_id"] for i in range(7)]
        first = (await hq.client.get("/api/v1/requests", params={"limit": 3})).json()
        assert [item["correlation_id"] for item in first["items"]] == first_ids[::-1][:3]
        assert first["items"][0]["handler"] == "record" and first["items"][0]["endpoint"] is None
        seen = [item["correlation_id"] for item in first["items"]]
        cursor = first["next_cursor"]
        while cursor is not None:
            await hq.accepted({"late": True}, handler="record")  # newer than every page still to come
            body = (await hq.client.get("/api/v1/requests", params={"limit": 3, "cursor": cursor})).json()
            seen += [item["correlation_id"] for item in body["items"]]
            cursor = body["next_cursor"]
        assert seen == first_ids[::-1]


async def test_filters_and_counts_select_by_status_handler_and_session(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path)) as hq:
        done = [(await hq.accepted({"n": i}, handler="record", session_id="s-1"))["correlation_id"] for i in range(2)]
        failed = (await hq.accepted("x", handler="give_up"))["correlation_id"]
        for cid in [*done, failed]:
            await hq.result(cid)
        assert await pages(hq, 10, handler="record") == done[::-1]
        assert await pages(hq, 1, status="FAILED,COMPLETED") == [failed, *done[::-1]]
        assert await pages(hq, 10, session_id="s-1", status=["COMPLETED"]) == done[::-1]
        assert await pages(hq, 10, id_prefix=failed[:12]) == [failed]
        counts = (await hq.client.get("/api/v1/requests/counts")).json()
        assert counts["counts"] == {"COMPLETED": 2, "FAILED": 1}
        by_handler = (await hq.client.get("/api/v1/requests/counts", params={"handler": "give_up"})).json()
        assert by_handler["counts"] == {"FAILED": 1}


def flaky_backend() -> Starlette:
    """503 on the first call, then 200: one retry, two attempts."""
    calls: list[int] = []

    async def handle(request: Request) -> Response:
        calls.append(1)
        if len(calls) == 1:
            return JSONResponse({"busy": True}, status_code=503)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/work", handle, methods=["POST"])])


@pytest.fixture
def backend_url() -> Iterator[str]:
    with serve(flaky_backend()) as url:
        yield url


async def test_detail_masks_credentials_and_shows_two_attempts_after_a_503(tmp_path: Path, backend_url: str) -> None:
    endpoints = {"flaky": {"url": f"{backend_url}/work", "auth": {"type": "bearer", "token": CANARY},
                           "retry": {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.02}}}
    config = settings(tmp_path, proxy={"enabled": True, "endpoints": endpoints})
    async with in_process(Sample().app, config) as hq:
        response = await hq.client.post("/api/v1/submit", json={
            "payload": {"order": 7}, "metadata": {"endpoint": "flaky", "note": "kept"},
            "headers": {"Authorization": "Bearer client-secret", "Cookie": "s=1", "X-Note": f"with {CANARY}",
                        "X-Plain": "visible"}})
        cid = response.json()["correlation_id"]
        assert (await hq.result(cid))["status"] == "COMPLETED"
        detail = (await hq.client.get(f"/api/v1/requests/{cid}")).json()
    assert detail["endpoint"] == "flaky" and detail["handler"] is None
    assert detail["payload"] == {"order": 7} and detail["payload_encoding"] == "json"
    assert detail["metadata"] == {"note": "kept"}
    headers = detail["headers"]
    assert headers["X-Plain"] == "visible" and CANARY not in headers["X-Note"]
    assert "client-secret" not in headers["Authorization"] and headers["Cookie"] != "s=1"
    history = detail["attempt_history"]
    assert [(a["attempt"], a["status_code"]) for a in history] == [(1, 503), (2, 200)]
    assert all(a["worker_id"] and a["finished_at"] and a["duration_ms"] is not None for a in history)


async def test_a_finished_request_is_replayed_as_a_new_one(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path)) as hq:
        cid = (await hq.accepted({"n": 1}, handler="record"))["correlation_id"]
        await hq.result(cid)
        replay = await hq.client.post(f"/api/v1/requests/{cid}/replay")
        assert replay.status_code == 202 and replay.json()["replayed_from"] == cid
        again = replay.json()["correlation_id"]
        assert (await hq.result(again))["result"] == {"n": 1}
        status = (await hq.client.get(f"/api/v1/status/{again}")).json()
        assert status["replayed_from"] == cid


async def test_bulk_replay_by_filter_requeues_three_dead_letters(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path)) as hq:
        dead = [(await hq.accepted({"n": i}, handler="give_up"))["correlation_id"] for i in range(3)]
        other = (await hq.accepted("y", handler="not_json"))["correlation_id"]
        for cid in [*dead, other]:
            await hq.result(cid)
        listed = (await hq.client.get("/api/v1/dlq", params={"handler": "give_up"})).json()
        assert sorted(entry["correlation_id"] for entry in listed) == sorted(dead)
        outcome = (await hq.client.post("/api/v1/dlq/replay", json={"filter": {"handler": "give_up"}})).json()
        assert outcome == {"matched": 3, "done": 3, "skipped": []}
        replays = (await hq.client.get("/api/v1/requests", params={"handler": "give_up"})).json()["items"]
        assert sorted(item["replayed_from"] for item in replays if item["replayed_from"]) == sorted(dead)
        for item in replays:
            await hq.result(item["correlation_id"])
        again = (await hq.client.get("/api/v1/dlq", params={"handler": "give_up"})).json()
        assert len(again) == 3 and not {e["id"] for e in again} & {e["id"] for e in listed}  # the replays died too
        deleted = (await hq.client.post("/api/v1/dlq/delete", json={"ids": [again[0]["id"], "nope"]})).json()
        assert deleted["matched"] == 2 and deleted["done"] == 1 and deleted["skipped"][0]["id"] == "nope"
        by_filter = (await hq.client.post("/api/v1/dlq/delete", json={"filter": {"handler": "give_up"}})).json()
        assert by_filter == {"matched": 2, "done": 2, "skipped": []}
        assert len((await hq.client.get("/api/v1/dlq")).json()) == 1  # not_json's stays


async def test_bulk_cancel_by_ids_and_by_filter(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        ids = [(await hq.accepted({"n": i}, handler="record"))["correlation_id"] for i in range(4)]
        by_ids = (await hq.client.post("/api/v1/requests/cancel", json={"ids": [ids[0], "missing"]})).json()
        assert by_ids["matched"] == 2 and by_ids["done"] == 1 and by_ids["skipped"][0]["id"] == "missing"
        by_filter = (await hq.client.post("/api/v1/requests/cancel",
                                          json={"filter": {"handler": "record"}, "limit": 2})).json()
        assert by_filter == {"matched": 2, "done": 2, "skipped": []}
        counts = (await hq.client.get("/api/v1/requests/counts")).json()["counts"]
        assert counts == {"CANCELLED": 3, "PENDING": 1}


KEYS = {"a": "console-key-a", "b": "console-key-b", "admin": "console-key-admin"}
SCOPES = {"a": ["submit", "read"], "b": ["submit", "read"], "admin": ["submit", "read", "admin"]}


def as_client(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


async def test_each_client_sees_only_its_own_requests_and_an_admin_key_all(tmp_path: Path) -> None:
    api_keys = [{"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": SCOPES[name]}
                for name, key in KEYS.items()]
    async with in_process(Sample().app, settings(tmp_path, auth={"api_keys": api_keys}), workers=False) as hq:
        mine = (await hq.submit({"n": 1}, headers=as_client("a"), handler="record")).json()["correlation_id"]
        theirs = (await hq.submit({"n": 2}, headers=as_client("b"), handler="record")).json()["correlation_id"]
        client = hq.client

        async def listed(who: str) -> list[str]:
            body = (await client.get("/api/v1/requests", headers=as_client(who))).json()
            return [item["correlation_id"] for item in body["items"]]

        assert await listed("a") == [mine] and await listed("b") == [theirs]
        assert sorted(await listed("admin")) == sorted([mine, theirs])
        assert (await client.get(f"/api/v1/requests/{theirs}", headers=as_client("a"))).status_code == 404
        counts = (await client.get("/api/v1/requests/counts", headers=as_client("a"))).json()
        assert counts["counts"] == {"PENDING": 1}
        refused = await client.post("/api/v1/requests/cancel", json={"ids": [theirs]}, headers=as_client("a"))
        assert refused.status_code == 403  # bulk actions are the admin's
        by_admin = await client.post("/api/v1/requests/cancel", json={"ids": [theirs]}, headers=as_client("admin"))
        assert by_admin.json()["done"] == 1
        replay = await client.post(f"/api/v1/requests/{mine}/replay", headers=as_client("a"))
        assert replay.status_code == 403


@pytest.mark.parametrize(("params", "named"), [
    ({"status": "DONE"}, "status"), ({"cursor": "not-a-cursor"}, "cursor"), ({"since": "yesterday"}, "since"),
    ({"until": "nan"}, "until"), ({"limit": 501}, "limit")])
async def test_bad_list_input_is_a_422_naming_the_parameter(tmp_path: Path, params: dict[str, Any],
                                                            named: str) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        response = await hq.client.get("/api/v1/requests", params=params)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert named in response.json()["detail"]


async def test_bulk_body_needs_ids_or_a_filter_within_the_limit(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        answers: list[httpx.Response] = [
            await hq.client.post("/api/v1/requests/cancel", json={}),
            await hq.client.post("/api/v1/requests/cancel", json={"filter": {}, "limit": 10_001}),
            await hq.client.post("/api/v1/dlq/replay", json={"filter": {"since": "soon"}}),
        ]
    assert [a.status_code for a in answers] == [422, 422, 422]
    assert "limit" in answers[1].json()["detail"] and "since" in answers[2].json()["detail"]
