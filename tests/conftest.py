"""The end-of-run check that broker tests remove what they make (tests/leftovers.py).

Before the first test and after the last, each reachable shared service is asked for the test-made
names it holds; what appeared in between is listed, and fails the run under CI=true. Locally it is a
warning, split into the names this run made and those other runs on the same services made
meanwhile. What existed before the run is never reported, and nothing is deleted here.

Under pytest-xdist the check runs once, in the controlling process: its workers' tests overlap, so a
worker that finished early would see another's names still in use.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from types import FrameType

import pytest

from tests import leftovers
from tests.services import IN_CI

_BROKER_TESTS = ("contract", "integration", "e2e")
_BEFORE = pytest.StashKey[dict[str, set[str]]]()
_LEFT = pytest.StashKey[dict[str, list[str]]]()


def _uses_brokers(items: list[pytest.Item]) -> bool:
    tests = Path(__file__).parent
    return any(item.path.is_relative_to(tests / part) for item in items for part in _BROKER_TESTS)


def _xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not _xdist_worker(config)


def _args_reach_brokers(config: pytest.Config) -> bool:
    """Whether the paths the run was given include broker tests (the controller collects nothing)."""
    tests = Path(__file__).parent.resolve()
    for arg in config.args or [str(tests)]:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if any(path.is_relative_to(tests / part) or (tests / part).is_relative_to(path) for part in _BROKER_TESTS):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist the chaos drills, which start and kill brokers of their own, share one worker."""
    if config.pluginmanager.hasplugin("xdist"):
        chaos = Path(__file__).parent / "chaos"
        for item in items:
            if item.path.is_relative_to(chaos):
                item.add_marker(pytest.mark.xdist_group("chaos"))


def _dump_tasks(signum: int, frame: FrameType | None) -> None:
    """`kill -USR1 <pytest pid>`: print where every task of the running event loop waits (a hung test)."""
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        tasks = set()
    print(f"\n== {len(tasks)} asyncio task(s)", file=sys.stderr)
    for task in tasks:
        task.print_stack(file=sys.stderr)


signal.signal(signal.SIGUSR1, _dump_tasks)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _xdist_controller(session.config) and _args_reach_brokers(session.config) \
            and not session.config.option.collectonly:
        session.config.stash[_BEFORE] = leftovers.inventory_in_a_subprocess()


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if _xdist_worker(config) or _xdist_controller(config):
        return
    if _uses_brokers(session.items) and not config.option.collectonly:
        config.stash[_BEFORE] = leftovers.inventory_in_a_subprocess()


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
