"""Runs the one contract suite against every backend target in `targets/` (described in its __init__).

Adding a broker adds one file there.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType
from typing import Protocol

import pytest

from openhqm.backends import Backend, create_backend
from openhqm.config import Settings
from tests import leftovers
from tests.contract import targets
from tests.contract.stores import make_store, store  # noqa: F401 (the result-store fixtures)


def _targets() -> list[ModuleType]:
    modules = [importlib.import_module(f"{targets.__name__}.{info.name}")
               for info in pkgutil.iter_modules(targets.__path__)]
    return sorted(modules, key=lambda m: m.NAME)


TARGETS = _targets()
CONTRACT_DELAYS_S = (1.0,)  # the delays test_contract.py uses (RabbitMQ makes a queue per delay)


class BackendFactory(Protocol):
    def __call__(self, *, lease_s: float | None = None, address: str | None = None) -> Awaitable[Backend]:
        """A connected backend; `lease_s` and `address` as in the targets' `make_settings`."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A target's KNOWN_BUGS (test-name pattern -> the bug) marks those tests strict xfail for it alone;
    RACY_BUGS, for a bug that shows in some runs only, marks them non-strict (a pass is no news)."""
    for item in items:
        target = getattr(item, "callspec", None) and item.callspec.params.get("target")  # type: ignore[attr-defined]
        for strict, bugs in ((True, getattr(target, "KNOWN_BUGS", {})), (False, getattr(target, "RACY_BUGS", {}))):
            for pattern, bug in bugs.items():
                if fnmatchcase(item.name, pattern):
                    item.add_marker(pytest.mark.xfail(strict=strict, reason=bug))


@pytest.fixture(params=TARGETS, ids=[m.NAME for m in TARGETS])
def target(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
async def make_backend(
    target: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue: str
) -> AsyncIterator[BackendFactory]:
    # Depends on `queue` so that the test's queues are removed after every backend closed (a consumer
    # still running could make them again).
    # Backends of one test made with the same options share their settings (a Kafka target's group id
    # is drawn per settings object, and every consumer of a test must be in one group).
    settings: dict[tuple[float | None, str | None], Settings] = {}
    opened: list[Backend] = []

    async def factory(*, lease_s: float | None = None, address: str | None = None) -> Backend:
        if (lease_s, address) not in settings:
            settings[lease_s, address] = await target.make_settings(tmp_path, lease_s=lease_s, address=address)
        if lease_s is not None and hasattr(target, "LEASE_CONSTANT"):
            monkeypatch.setattr(target.LEASE_CONSTANT, lease_s)
        backend = create_backend(settings[lease_s, address])
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        await backend.close()


@pytest.fixture
async def backend(make_backend: BackendFactory) -> Backend:
    return await make_backend()


@pytest.fixture
async def queue(target: ModuleType) -> AsyncIterator[str]:
    """A queue name of this test alone; what the test made under it on the broker is removed afterwards
    (tests/conftest.py checks at the end of the run that nothing is left)."""
    name = f"contract-{leftovers.unique()}"
    yield name
    if target.SERVICE is not None:
        await leftovers.remove_queues(target.SERVICE, [name], delays_s=CONTRACT_DELAYS_S)


@pytest.fixture(scope="session", autouse=True)
def _end_targets_sessions() -> Iterator[None]:
    """Targets that share something across a session (NATS: one stream) remove it at its end."""
    yield
    for module in TARGETS:
        if (end := getattr(module, "end_session", None)) is not None:
            asyncio.run(end())
