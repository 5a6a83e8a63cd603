"""A headless Chromium for the console's tests (Playwright driving Debian's chromium package), and the
directory its screenshots go to (named at the end of the run)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import require_chromium

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
_STARTED = pytest.StashKey[float]()


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
def shots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STARTED] = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    # Read from the directory, not from the tests: under pytest-xdist they ran in other processes.
    started = config.stash.get(_STARTED, time.time())
    if ARTIFACTS.is_dir() and any(png.stat().st_mtime >= started for png in ARTIFACTS.glob("*.png")):
        terminalreporter.line(f"console screenshots: {ARTIFACTS}")
