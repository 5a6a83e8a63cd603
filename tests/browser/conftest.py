"""A headless Chromium for the console's tests (Playwright driving Debian's chromium package), and the
directory its screenshots go to (named at the end of the run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import require_chromium

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
_SHOT = pytest.StashKey[bool]()


# One browser per test, not per session: Playwright's sync API runs an event loop of its own, and one
# kept across tests broke the asyncio tests that ran after it in the same pytest process.
@pytest.fixture
def browser() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test (no cookies carried over); a script error fails the test, and
    so does any dialog (alert, confirm): the console never opens one."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (errors.append(f"a {dialog.type} dialog opened: {dialog.message}"),
                                      dialog.dismiss()))
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    request.config.stash[_SHOT] = True
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.stash.get(_SHOT, False):
        terminalreporter.line(f"console screenshots: {ARTIFACTS}")
