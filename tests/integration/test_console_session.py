"""The console's page, sign-in cookie and CSRF checks, and its tick stream, over HTTP without a
browser (tests/browser/test_console.py drives the page itself)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from tests.harness import InProcess, Sample, in_process, served, settings

ADMIN, READER, SUBMITTER = "admin-key-0123456789", "reader-key-0123456789", "submitter-key-0123456789"
AUTH = {"api_keys": [
    {"name": "ops", "key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["submit", "read", "admin"]},
    {"name": "ops", "key_sha256": hashlib.sha256(READER.encode()).hexdigest(), "scopes": ["read"]},
    {"name": "svc", "key_sha256": hashlib.sha256(SUBMITTER.encode()).hexdigest(), "scopes": ["submit"]},
]}
SAME_ORIGIN = {"Origin": "http://openhqm.test"}


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(Sample().app, settings(tmp_path, auth=AUTH), workers=False) as hq:
        yield hq


async def sign_in(hq: InProcess, key: str) -> httpx.Response:
    return await hq.client.post("/console/session", json={"api_key": key}, headers=SAME_ORIGIN)


async def scheduled(hq: InProcess) -> str:
    response = await hq.client.post("/api/v1/submit", json={"payload": {}, "metadata": {"delay_s": 600}},
                                    headers={"X-API-Key": ADMIN})
    assert response.status_code == 202, response.text
    correlation_id: str = response.json()["correlation_id"]
    return correlation_id


async def test_the_page_loads_only_its_own_scripts(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        page = await hq.client.get("/console")
        script = await hq.client.get("/console/assets/app.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert 'src="/console/assets/app.js"' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


async def test_console_enabled_false_removes_the_page_and_its_stream(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path, console={"enabled": False}), workers=False) as hq:
        assert (await hq.client.get("/console")).status_code == 404
        assert (await hq.client.get("/api/v1/console/events")).status_code == 404


async def test_without_access_control_the_session_acts_as_admin_for_anyone(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as hq:
        session = (await hq.client.get("/console/session")).json()
        refused = await hq.client.post("/console/session", json={"api_key": "x"}, headers=SAME_ORIGIN)
    assert session == {"auth_required": False, "signed_in": True, "client_id": None,
                       "scopes": ["submit", "read", "admin"], "csrf_token": None}
    assert refused.status_code == 409 and "access control is off" in refused.json()["detail"]


async def test_sign_in_keeps_the_key_in_an_httponly_strict_cookie_the_api_accepts(secured: InProcess) -> None:
    answer = await sign_in(secured, ADMIN)
    assert answer.status_code == 200 and answer.json()["client_id"] == "ops"
    cookies = {c.split("=", 1)[0]: c.lower() for c in answer.headers.get_list("set-cookie")}
    assert "httponly" in cookies["openhqm_console"] and "samesite=strict" in cookies["openhqm_console"]
    assert "path=/" in cookies["openhqm_console"] and "secure" not in cookies["openhqm_console"]  # http here
    assert "httponly" not in cookies["openhqm_csrf"]  # the page reads it to echo it
    cid = await scheduled(secured)
    status = await secured.client.get(f"/api/v1/status/{cid}")  # the cookie alone
    assert status.status_code == 200
    session = (await secured.client.get("/console/session")).json()
    assert session["signed_in"] and session["csrf_token"] == secured.client.cookies["openhqm_csrf"]


@pytest.mark.parametrize(("key", "headers", "status", "words"), [
    ("not-a-key", SAME_ORIGIN, 401, "not valid"),
    (SUBMITTER, SAME_ORIGIN, 403, "lacks the scope 'read'"),
    (ADMIN, {"Origin": "https://evil.example"}, 403, "not this listener's"),
    (ADMIN, {"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
])
async def test_sign_in_refuses_bad_keys_and_other_sites(secured: InProcess, key: str, headers: dict[str, str],
                                                        status: int, words: str) -> None:
    answer = await secured.client.post("/console/session", json={"api_key": key}, headers=headers)
    assert answer.status_code == status and words in answer.json()["detail"]
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize(("headers", "words"), [
    ({}, "X-Csrf-Token"),
    ({"X-CSRF-Token": "guessed"}, "X-Csrf-Token"),
    ({"Origin": "https://evil.example", "csrf": "yes"}, "not this listener's"),
    ({"Sec-Fetch-Site": "same-site", "csrf": "yes"}, "same-site request"),
])
async def test_a_cookie_authenticated_change_without_the_token_or_from_elsewhere_is_refused(
        secured: InProcess, headers: dict[str, str], words: str) -> None:
    await sign_in(secured, ADMIN)
    cid = await scheduled(secured)
    if headers.pop("csrf", None):
        headers["X-CSRF-Token"] = secured.client.cookies["openhqm_csrf"]
    refused = await secured.client.delete(f"/api/v1/requests/{cid}", headers=headers)
    assert refused.status_code == 403 and words in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/problem+json"
    allowed = await secured.client.delete(f"/api/v1/requests/{cid}",
                                          headers={"X-CSRF-Token": secured.client.cookies["openhqm_csrf"]})
    assert allowed.status_code == 200 and allowed.json()["status"] == "CANCELLED"


async def test_a_read_session_may_look_but_not_act(secured: InProcess) -> None:
    await sign_in(secured, READER)
    cid = await scheduled(secured)
    assert (await secured.client.get(f"/api/v1/status/{cid}")).status_code == 200
    refused = await secured.client.delete(f"/api/v1/requests/{cid}",
                                          headers={"X-CSRF-Token": secured.client.cookies["openhqm_csrf"]})
    assert refused.status_code == 403 and "'admin'" in refused.json()["detail"]


async def test_a_jwt_signs_in_as_its_subject(tmp_path: Path) -> None:
    secret = "console-test-secret-of-at-least-32-bytes"
    token = jwt.encode({"sub": "oncall", "scope": "read admin", "exp": int(time.time()) + 300}, secret)
    async with in_process(Sample().app, settings(tmp_path, auth={"jwt": {"key": secret}}), workers=False) as hq:
        answer = await sign_in(hq, token)
        assert answer.status_code == 200
        assert answer.json()["client_id"] == "oncall" and answer.json()["scopes"] == ["admin", "read"]
        assert (await hq.client.get("/api/v1/queues")).status_code == 200


async def test_the_cookie_counts_only_for_the_console_and_the_api(secured: InProcess) -> None:
    await sign_in(secured, ADMIN)
    assert (await secured.client.get("/elsewhere")).status_code == 401


async def test_sign_out_forgets_the_key(secured: InProcess) -> None:
    await sign_in(secured, ADMIN)
    out = await secured.client.post("/console/session/delete", headers=SAME_ORIGIN)
    assert out.status_code == 204
    assert "openhqm_console" not in secured.client.cookies
    assert not (await secured.client.get("/console/session")).json()["signed_in"]
    assert (await secured.client.get("/api/v1/status/x")).status_code == 401


@pytest.mark.parametrize("body", [b"not json", b'{"api_key": ""}', b'{"api_key": "a;b"}', b"[]"])
async def test_a_malformed_sign_in_is_a_422_naming_the_field(secured: InProcess, body: bytes) -> None:
    answer = await secured.client.post("/console/session", content=body, headers=SAME_ORIGIN)
    assert answer.status_code == 422 and "api_key" in answer.json()["detail"]


def test_the_console_stream_ticks_with_the_overview_the_public_routes_give(tmp_path: Path) -> None:
    with served(Sample().app, settings(tmp_path)) as url:
        with httpx.stream("GET", url + "/api/v1/console/events", timeout=10) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            tick = first_event(stream.iter_lines(), "tick")
        queues = httpx.get(url + "/api/v1/queues").json()
        series = httpx.get(url + "/api/v1/queues/openhqm-requests/series", params={"minutes": 15}).json()
    assert tick["queues"] == queues and tick["queues"][0]["name"] == "openhqm-requests"
    assert len(tick["series"]["openhqm-requests"]["minutes"]) == len(series["minutes"]) == 15
    assert tick["ready"] == {"queue": {"ok": True, "detail": tick["ready"]["queue"]["detail"]},
                             "results": {"ok": True, "detail": tick["ready"]["results"]["detail"]}}
    assert [worker["alive"] for worker in tick["workers"]] == [True]


def first_event(lines: Any, name: str) -> dict[str, Any]:
    event = None
    for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == name:
            data: dict[str, Any] = orjson.loads(line.split(":", 1)[1])
            return data
    raise AssertionError(f"the stream ended without a {name!r} event")
