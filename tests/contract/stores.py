"""The result-store fixtures: one store per target in `store_targets/`, for the contract modules."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest

from openhqm.results import ResultStore, create_store
from tests.contract import store_targets

TARGETS = sorted((importlib.import_module(f"{store_targets.__name__}.{i.name}")
                  for i in pkgutil.iter_modules(store_targets.__path__)), key=lambda m: m.NAME)

StoreFactory = Callable[[], Awaitable[ResultStore]]


@pytest.fixture(params=TARGETS, ids=[m.NAME for m in TARGETS])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    target: ModuleType = request.param
    settings = await target.make_settings(tmp_path)
    opened: list[ResultStore] = []
    shared: list[ResultStore] = []

    async def factory() -> ResultStore:
        if shared and not target.CROSS_PROCESS:
            return shared[0]
        store = create_store(settings)
        await store.connect()
        opened.append(store)
        shared.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if (remove := getattr(target, "remove", None)) is not None:  # what the test made on a shared service
        await remove(settings)


@pytest.fixture
async def store(make_store: StoreFactory) -> ResultStore:
    return await make_store()
