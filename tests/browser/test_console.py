"""The operator console in a real browser (Chromium driven by Playwright) against a served listener
on SQLite: what an operator sees and what the buttons do, through the public API only.

Screens are saved as PNGs (light and dark) under tests/artifacts/console/ for a person to look at."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness import Sample, served, settings, wait_until
from tests.integration.http_servers import serve

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI=true) with the reason
    expect = None

XSS = "<img src=x onerror=alert(1)>"
ALICE_ADMIN, ALICE_READ, BOB = "alice-admin-key-0123456789", "alice-read-key-0123456789", "bob-key-0123456789"


def key_entry(name: str, key: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes}


AUTH = {"api_keys": [key_entry("alice", ALICE_ADMIN, ["submit", "read", "admin"]),
                     key_entry("alice", ALICE_READ, ["read"]),
                     key_entry("bob", BOB, ["submit", "read"])]}  # admin keys see every client's requests


@dataclass
class Listener:
    url: str
    sample: Sample

    def submit(self, payload: Any, key: str | None = None, **metadata: Any) -> str:
        headers = {"X-API-Key": key} if key else {}
        response = httpx.post(self.url + "/api/v1/submit", json={"payload": payload, "metadata": metadata},
                              headers=headers)
        assert response.status_code == 202, response.text
        correlation_id: str = response.json()["correlation_id"]
        return correlation_id

    def status(self, correlation_id: str, key: str | None = None) -> str:
        headers = {"X-API-Key": key} if key else {}
        status: str = httpx.get(f"{self.url}/api/v1/status/{correlation_id}", headers=headers).json()["status"]
        return status

    def console(self, hash_: str = "#/overview") -> str:
        return f"{self.url}/console{hash_}"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sample = Sample()
    with served(sample.app, settings(tmp_path)) as url:
        yield Listener(url, sample)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Listener]:
    sample = Sample()
    with served(sample.app, settings(tmp_path, auth=AUTH)) as url:
        yield Listener(url, sample)


CANCEL_WITH_TOKEN = """async (id) => {
    const token = document.cookie.match(/openhqm_csrf=([^;]+)/)[1];
    const r = await fetch(`/api/v1/requests/${id}`, {method: "DELETE", headers: {"X-CSRF-Token": token}});
    return r.status; }"""


def confirm(page: Any) -> None:
    page.locator("dialog.confirm [data-confirm]").click()


def sign_in(page: Any, listener: Listener, key: str) -> None:
    page.goto(listener.console())
    page.locator("input[name=api_key]").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).not_to_be_empty()


def test_a_scheduled_request_is_cancelled_from_its_detail_page(listener: Listener, page: Any) -> None:
    cid = listener.submit({"name": "later"}, handler="record", delay_s=600)
    page.goto(listener.console(f"#/requests/{cid}"))
    expect(page.locator(".page-head .badge")).to_have_text("SCHEDULED")
    page.get_by_role("button", name="Cancel").click()
    confirm(page)
    expect(page.locator(".page-head .badge")).to_have_text("CANCELLED")
    expect(page.locator("ol.events")).to_contain_text("CANCELLED")  # the live event stream told it
    assert listener.status(cid) == "CANCELLED"
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)


def test_markup_in_a_payload_is_shown_as_text_and_never_runs(listener: Listener, page: Any) -> None:
    cid = listener.submit({"note": XSS}, handler="record")
    wait_until(lambda: listener.status(cid) == "COMPLETED")
    page.goto(listener.console(f"#/requests/{cid}"))
    expect(page.locator("pre.code", has_text=XSS).first).to_be_visible()
    assert page.locator("main img").count() == 0
    expect(page.locator("pre.code", has_text=XSS)).to_have_count(2)  # the payload and the result
    page.goto(listener.console("#/requests"))
    expect(page.locator(f"tr[data-id='{cid}']")).to_be_visible()
    # The `page` fixture fails the test had any dialog (the alert) opened.


class FlakyBackend:
    """A real HTTP backend on 127.0.0.1: 503 to the first call, 200 after."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: Request) -> Response:
        self.calls += 1
        if self.calls == 1:
            return Response(b"busy", status_code=503)
        return JSONResponse({"ok": True, "call": self.calls})


def test_detail_shows_both_attempts_after_one_503_from_the_backend(tmp_path: Path, page: Any) -> None:
    backend = FlakyBackend()
    with serve(Starlette(routes=[Route("/work", backend.handle, methods=["POST"])])) as backend_url:
        config = settings(tmp_path, proxy={"enabled": True, "default_endpoint": "work",
                                           "endpoints": {"work": {"url": backend_url + "/work"}}})
        sample = Sample()
        with served(sample.app, config) as url:
            listener = Listener(url, sample)
            cid = listener.submit({"job": 1}, endpoint="work")
            wait_until(lambda: listener.status(cid) == "COMPLETED")
            page.goto(listener.console(f"#/requests/{cid}"))
            rows = page.locator("table.attempts tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0)).to_contain_text("503")
            expect(page.locator(".page-head .badge")).to_have_text("COMPLETED")


def test_three_dead_letters_are_replayed_by_filter_after_a_confirmation(listener: Listener, page: Any) -> None:
    flaky = [listener.submit({"n": n}, handler="flaky") for n in range(3)]
    other = listener.submit({}, handler="give_up")
    for cid in [*flaky, other]:
        wait_until(lambda cid=cid: listener.status(cid) == "FAILED")
    wait_until(lambda: len(httpx.get(listener.url + "/api/v1/dlq").json()) == 4)
    listener.sample.failing = False
    page.goto(listener.console("#/dlq"))
    expect(page.locator("tbody tr")).to_have_count(4)
    page.locator("form.filters input[name=handler]").fill("flaky")  # the filter form puts it in the address
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"#/dlq\?handler=flaky$"))
    expect(page.locator("tbody tr")).to_have_count(3)
    page.get_by_role("button", name="Replay matching…").click()
    expect(page.locator("dialog.confirm")).to_contain_text("3 dead letters match")
    confirm(page)
    expect(page.locator(".toast")).to_contain_text("replayed 3")
    wait_until(lambda: httpx.get(listener.url + "/api/v1/stats").json()["requests"].get("COMPLETED") == 3)
    remaining = httpx.get(listener.url + "/api/v1/dlq", params={"handler": "give_up"}).json()
    assert [d["correlation_id"] for d in remaining] == [other]


def test_bulk_cancel_by_filter_states_the_count_before_it_acts(listener: Listener, page: Any) -> None:
    batch = [listener.submit({"n": n}, handler="record", delay_s=600, session_id="night-batch") for n in range(3)]
    other = listener.submit({"n": "other"}, handler="record", delay_s=600)
    page.goto(listener.console("#/requests"))
    page.locator("form.filters input[name=session_id]").fill("night-batch")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"#/requests\?session_id=night-batch$"))
    expect(page.locator("tbody tr")).to_have_count(3)
    page.get_by_role("button", name="Cancel matching…").click()
    expect(page.locator("dialog.confirm")).to_contain_text("3 unfinished requests match")
    confirm(page)
    expect(page.locator(".toast")).to_contain_text("cancelled 3")
    assert [listener.status(cid) for cid in batch] == ["CANCELLED"] * 3
    assert listener.status(other) == "SCHEDULED"


def test_overview_shows_depth_rising_while_paused_and_falling_after_resume(listener: Listener, page: Any) -> None:
    page.goto(listener.console("#/overview"))
    card = page.locator("section.queue[data-queue='openhqm-requests']")
    card.get_by_role("button", name="Pause").click()
    confirm(page)
    expect(card.locator(".pill.paused")).to_be_visible()
    for n in range(50):
        listener.submit({"n": n}, handler="record")
    pending = card.locator("[data-figure=pending] .value")
    expect(pending).to_have_text("50")
    card.get_by_role("button", name="Resume").click()
    expect(pending).to_have_text("0", timeout=30_000)
    expect(card.locator(".pill.paused")).to_have_count(0)


def test_a_read_key_sees_requests_but_cannot_act(secured: Listener, page: Any, shots: Path) -> None:
    cid = secured.submit({"name": "later"}, key=ALICE_ADMIN, handler="record", delay_s=600)
    sign_in(page, secured, ALICE_READ)
    expect(page.locator("#who")).to_contain_text("read only")
    card = page.locator("section.queue[data-queue='openhqm-requests']")
    expect(card).to_contain_text("running")
    expect(card.get_by_role("button", name="Pause")).to_have_count(0)
    page.screenshot(path=shots / "overview-read-only-light.png", full_page=True)
    page.goto(secured.console(f"#/requests/{cid}"))
    expect(page.locator(".page-head .badge")).to_have_text("SCHEDULED")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    page.goto(secured.console("#/requests"))
    expect(page.locator("main h1")).to_have_text("Requests")
    expect(page.get_by_role("button", name="Cancel matching…")).to_have_count(0)
    # The API refuses the action anyway, even with the CSRF token the page holds.
    assert page.evaluate(CANCEL_WITH_TOKEN, cid) == 403
    assert secured.status(cid, ALICE_ADMIN) == "SCHEDULED"


def test_another_clients_requests_stay_invisible(secured: Listener, page: Any) -> None:
    cid = secured.submit({"name": "alice's"}, key=ALICE_ADMIN, handler="record", delay_s=600)
    sign_in(page, secured, BOB)
    page.goto(secured.console(f"#/requests/{cid}"))
    expect(page.locator(".notice")).to_contain_text("no request with id")
    expect(page.locator(".page-head .badge")).to_have_count(0)
    page.goto(secured.console("#/requests"))
    expect(page.locator(".empty")).to_contain_text("No request matches")
    expect(page.locator("[data-count=SCHEDULED] strong")).to_have_text("0")


def test_a_cookie_authenticated_post_without_the_csrf_token_is_refused(secured: Listener, page: Any) -> None:
    cid = secured.submit({"name": "later"}, key=ALICE_ADMIN, handler="record", delay_s=600)
    sign_in(page, secured, ALICE_ADMIN)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["openhqm_console"]["httpOnly"] and cookies["openhqm_console"]["sameSite"] == "Strict"
    status = page.evaluate("async (id) => (await fetch(`/api/v1/requests/${id}`, {method: 'DELETE'})).status", cid)
    assert status == 403
    assert secured.status(cid, ALICE_ADMIN) == "SCHEDULED"
    # The same request with the token goes through: the refusal was the missing token.
    assert page.evaluate(CANCEL_WITH_TOKEN, cid) == 200


def populate(listener: Listener) -> str:
    for n in range(4):
        listener.submit({"order": n, "note": XSS if n == 0 else "ok"}, handler="record", session_id="s-42")
    listener.submit({"order": "later"}, handler="record", delay_s=900)
    failed = listener.submit({"order": "bad", "items": [1, 2, 3]}, handler="flaky")
    listener.submit({}, handler="give_up")
    wait_until(lambda: listener.status(failed) == "FAILED")
    return failed


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_screen_renders_in_light_and_dark(listener: Listener, page: Any, shots: Path, theme: str) -> None:
    failed = populate(listener)
    page.emulate_media(color_scheme=theme)
    screens = [("overview", "#/overview", "section.queue"), ("requests", "#/requests", "main table, main .notice"),
               ("detail", f"#/requests/{failed}", ".page-head .badge"), ("dlq", "#/dlq", "main tbody tr")]
    for name, hash_, ready in screens:
        page.goto(listener.console(hash_))
        expect(page.locator(ready).first).to_be_visible()
        expect(page.locator("#live")).to_have_text("live")
        page.screenshot(path=shots / f"{name}-{theme}.png", full_page=True)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_sign_in_page_renders_in_light_and_dark(secured: Listener, page: Any, shots: Path, theme: str) -> None:
    page.emulate_media(color_scheme=theme)
    page.goto(secured.console())
    page.locator("input[name=api_key]").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".signin .error-text")).to_contain_text("not valid")
    page.screenshot(path=shots / f"signin-{theme}.png")
