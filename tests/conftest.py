"""The end-of-run check that broker tests remove what they make (tests/leftovers.py).

Before the first test and after the last, each reachable shared service is asked for the test-made
names it holds; what appeared in between is listed, and fails the run under CI=true. Locally it is a
warning, split into the names this run made and those other runs on the same services made
meanwhile. What existed before the run is never reported, and nothing is deleted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import leftovers
from tests.services import IN_CI

_BROKER_TESTS = ("contract", "integration", "e2e")
_BEFORE = pytest.StashKey[dict[str, set[str]]]()
_LEFT = pytest.StashKey[dict[str, list[str]]]()


def _uses_brokers(items: list[pytest.Item]) -> bool:
    tests = Path(__file__).parent
    return any(item.path.is_relative_to(tests / part) for item in items for part in _BROKER_TESTS)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _uses_brokers(session.items) and not session.config.option.collectonly:
        session.config.stash[_BEFORE] = leftovers.inventory_in_a_subprocess()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    left = leftovers.left_behind(before, leftovers.inventory_in_a_subprocess())
    session.config.stash[_LEFT] = left
    if left and IN_CI and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left = config.stash.get(_LEFT, {})
    if not left:
        return
    verdict = "fails the run (CI=true)" if IN_CI else "a warning here; fails under CI=true"
    terminalreporter.section(f"left behind on shared services: {verdict}", yellow=True, red=IN_CI)
    for service, names in left.items():
        ours = [name for name in names if leftovers.made_here(name)]
        others = [name for name in names if name not in ours]
        for whose, listed in (("by this run", ours), ("by other runs meanwhile (or names not from unique())", others)):
            if listed:
                shown = ", ".join(listed[:20]) + (" ..." if len(listed) > 20 else "")
                terminalreporter.line(f"{service}, {len(listed)} {whose}: {shown}")
