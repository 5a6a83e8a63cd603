"""The console's "Flow limits" panel in a real browser (Chromium driven by Playwright) against a
served listener on SQLite: a limit with requests waiting on it, by key, and no panel without limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.harness import Sample, served, settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI=true) with the reason
    expect = None


def submit(url: str, **metadata: Any) -> None:
    response = httpx.post(url + "/api/v1/submit", json={"payload": {"name": "paced"}, "metadata": metadata})
    assert response.status_code == 202, response.text


def test_the_overview_shows_a_limit_with_its_waiting_requests_and_their_key(
        tmp_path: Path, page: Any, shots: Path) -> None:
    # One token every 60 s: the first request runs, the next two reserve tokens a minute and two ahead.
    flow = {"limits": {"per-tenant": {"handler": "record", "key": "metadata.tenant", "rate_per_s": 1 / 60,
                                      "burst": 1}}}
    with served(Sample().app, settings(tmp_path, flow=flow)) as url:
        for _ in range(3):
            submit(url, handler="record", tenant="acme")
        page.goto(f"{url}/console#/overview")
        row = page.locator("[data-panel=flow] tr[data-limit='per-tenant']")
        expect(row.locator("[data-figure=waiting]")).to_have_text("2", timeout=30_000)  # refreshed by the ticks
        expect(row).to_contain_text("handler record")
        expect(row).to_contain_text("metadata.tenant")
        expect(row.locator("[data-figure=top_keys]")).to_contain_text("acme 2 waiting, 0 in flight")
        expect(row.locator("[data-figure=reserved_until]")).to_contain_text("reservations run")
        page.screenshot(path=shots / "overview-flow-limits-light.png", full_page=True)


def test_the_overview_has_no_flow_panel_without_limits(tmp_path: Path, page: Any) -> None:
    with served(Sample().app, settings(tmp_path)) as url:
        page.goto(f"{url}/console#/overview")
        expect(page.locator("section.queue").first).to_be_visible()
        expect(page.locator("#live")).to_have_text("live")  # a tick has been drawn
        expect(page.locator("[data-panel=flow]")).to_be_hidden()
