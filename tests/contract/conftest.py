"""Runs the one contract suite against every backend target in `targets/`.

A target module defines NAME, BULK_COUNT and `make_settings(tmp_path) -> Settings` (which calls
require_service for a real broker). Adding a broker adds one file there.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest

from openhqm.backends import Backend, create_backend
from tests.contract import targets


def _targets() -> list[ModuleType]:
    modules = [importlib.import_module(f"{targets.__name__}.{info.name}")
               for info in pkgutil.iter_modules(targets.__path__)]
    return sorted(modules, key=lambda m: m.NAME)


TARGETS = _targets()

BackendFactory = Callable[[], Awaitable[Backend]]


@pytest.fixture(params=TARGETS, ids=[m.NAME for m in TARGETS])
def target(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
async def make_backend(target: ModuleType, tmp_path: Path) -> AsyncIterator[BackendFactory]:
    settings = await target.make_settings(tmp_path)
    opened: list[Backend] = []

    async def factory() -> Backend:
        backend = create_backend(settings)
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
def queue() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"
