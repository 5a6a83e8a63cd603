"""The result store's keyed state (`put_state` / `states`: schedules, queue pauses, heartbeats) and
its per-minute series of finished requests, on every store target in `store_targets/`."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest
import redis.asyncio as aioredis

from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.results import ResultStore, create_store
from openhqm.results.series import window
from tests.contract.stores import TARGETS
from tests.records import new_record

Opened = Callable[[], Awaitable[ResultStore]]


@pytest.fixture(params=TARGETS, ids=[m.NAME for m in TARGETS])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[ModuleType, Settings]]:
    module: ModuleType = request.param
    settings = await module.make_settings(tmp_path)
    yield module, settings
    if (remove := getattr(module, "remove", None)) is not None:
        await remove(settings)


@pytest.fixture
async def open_store(target: tuple[ModuleType, Settings]) -> AsyncIterator[Opened]:
    """A new store object on the target's store each call (the same one where it is per process)."""
    module, settings = target
    opened: list[ResultStore] = []

    async def factory() -> ResultStore:
        if opened and not module.CROSS_PROCESS:
            return opened[0]
        store = create_store(settings)
        await store.connect()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def test_keyed_state_is_stored_replaced_and_forgotten_per_kind_across_instances(open_store: Opened) -> None:
    first, second = await open_store(), await open_store()
    assert await second.states("queue") == {}
    await first.put_state("queue", "requests", b'{"paused": true}')
    await first.put_state("worker", "requests", b"beat")
    await second.put_state("queue", "requests", b'{"paused": false}')
    await second.put_state("queue", "other", b"{}")
    assert await first.states("queue") == {"requests": b'{"paused": false}', "other": b"{}"}
    assert await first.states("worker") == {"requests": b"beat"}
    await second.put_state("queue", "other", None)
    await second.put_state("queue", "never-stored", None)
    assert await first.states("queue") == {"requests": b'{"paused": false}'}
    assert await first.schedules() == {}  # schedules are a kind of their own


async def test_a_state_write_sets_state_written_in_the_writing_process(open_store: Opened) -> None:
    store = await open_store()
    written = store.state_written
    written.clear()
    await store.put_state("queue", "requests", b"{}")
    await asyncio.wait_for(written.wait(), 5)


async def test_a_state_write_sets_state_written_of_every_store_object_sharing_it(open_store: Opened) -> None:
    """The change feed a pause travels on (worker/pausing.py): the bell, Redis pub/sub, NOTIFY."""
    writer, watcher = await open_store(), await open_store()
    written = watcher.state_written
    written.clear()
    await writer.put_state("queue", "requests", b'{"paused": true}')
    await asyncio.wait_for(written.wait(), 5)
    written.clear()
    await writer.put_state("queue", "requests", None)
    await asyncio.wait_for(written.wait(), 5)


async def test_schedules_kept_before_the_keyed_state_stay_readable(target: tuple[ModuleType, Settings],
                                                                    open_store: Opened) -> None:
    module, settings = target
    if not module.CROSS_PROCESS:
        pytest.skip("the memory store keeps nothing across restarts")
    await write_legacy_schedule(module.NAME, settings, "nightly", b'{"paused": true}')
    store = await open_store()
    assert await store.schedules() == {"nightly": b'{"paused": true}'}
    await store.put_schedule("nightly", None)
    assert await (await open_store()).schedules() == {}  # moved once: not brought back by a later connect


async def write_legacy_schedule(store: str, settings: Settings, name: str, data: bytes) -> None:
    """A schedule as the versions before the keyed state stored it."""
    if store == "sqlite":
        conn = sqlite3.connect(settings.data_dir / "openhqm.db")
        with conn:
            conn.execute("CREATE TABLE schedules (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
            conn.execute("INSERT INTO schedules VALUES (?, ?)", (name, data))
        conn.close()
    elif store == "redis":
        client = aioredis.from_url(settings.results.redis.url.get_secret_value())
        await client.hset(f"{settings.results.redis.prefix}:schedules", name, data)
        await client.aclose()
    elif store == "postgres":
        table = f'"{settings.results.postgres.table}_schedules"'
        conn = await asyncpg.connect(settings.results.postgres.dsn.get_secret_value())
        await conn.execute(f"CREATE TABLE {table} (name text PRIMARY KEY, data bytea NOT NULL)")
        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", name, data)
        await conn.close()
    else:
        raise AssertionError(f"no legacy schedules for store {store!r}")


async def test_finished_series_counts_each_minute_and_its_latency_percentiles(open_store: Opened) -> None:
    store = await open_store()
    since, until = window(3, time.time())
    first = since + 1  # the oldest minute of the window
    latencies = [0.1 * i for i in range(1, 21)]  # 100 ms .. 2 s
    for latency in latencies:
        await store.create(new_record(status=Status.COMPLETED, submitted_at=first - latency, completed_at=first))
    await store.create(new_record(status=Status.FAILED, submitted_at=first + 57.5, completed_at=first + 58))
    await store.create(new_record(status=Status.CANCELLED, submitted_at=first, completed_at=first + 1))
    await store.create(new_record(status=Status.COMPLETED, submitted_at=since - 70, completed_at=since - 1))
    series = await store.finished_series(since, until)
    if series is None:
        pytest.skip(f"the {store.name} store does not report the series (documented)")
    assert [m.at for m in series] == [since, since + 60, since + 120]
    oldest = series[0]
    assert (oldest.completed, oldest.failed) == (20, 1)
    # Nearest rank over the 21 latencies: 20 completions of 0.1 .. 2.0 s and one failure of 0.5 s.
    assert (oldest.p50_ms, oldest.p95_ms, oldest.p99_ms) == pytest.approx((1000, 1900, 2000), abs=1)
    assert all((m.completed, m.failed, m.p50_ms) == (0, 0, None) for m in series[1:])
