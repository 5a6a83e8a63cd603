"""Redis result store behaviour beyond the contract: reconnects, lost publishes, TTL expiry, races.

Runs on the machine's shared Redis; every test uses its own key prefix and deletes its keys after.
The subscriber connection is killed by its own client id (CLIENT KILL ID), never by type.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
import redis.asyncio as aioredis

from openhqm.app import OpenHQM
from openhqm.backends.memory import MemoryBackend
from openhqm.bridge import Bridge
from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.envelope import Envelope
from openhqm.redis_pool import POOL_SIZE
from openhqm.results.redis import RedisResultStore
from openhqm.routing import Routing
from tests.contract.store_targets.redis import TEST_PREFIX
from tests.leftovers import remove_redis_keys, unique
from tests.records import new_record, waiting_for
from tests.services import require_service

StoreFactory = Callable[..., Awaitable[RedisResultStore]]


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(require_service("redis"))
    yield client
    await client.aclose()


@pytest.fixture
async def make_store(admin: aioredis.Redis) -> AsyncIterator[StoreFactory]:
    url = require_service("redis")
    prefix = f"{TEST_PREFIX}:{int(time.time())}:{unique()}"
    opened: list[RedisResultStore] = []

    async def factory(ttl_s: float = 60.0) -> RedisResultStore:
        store = RedisResultStore(url, prefix=prefix, ttl_s=ttl_s)
        await store.connect()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    await remove_redis_keys(url, f"{prefix}:*")


async def kill_listener(admin: aioredis.Redis, store: RedisResultStore) -> str:
    """Kill the store's subscriber connection; returns its client id."""
    ids = [c["id"] for c in await admin.client_list(_type="pubsub") if c["name"] == store.listener_name]
    assert len(ids) == 1
    assert await admin.client_kill_filter(_id=ids[0]) == 1
    return str(ids[0])


async def wait_until_resubscribed(admin: aioredis.Redis, store: RedisResultStore, old_id: str) -> None:
    # Redis offers no event for "a client subscribed", so poll CLIENT LIST, bounded in time.
    async with asyncio.timeout(10):
        while True:
            clients = [c for c in await admin.client_list(_type="pubsub") if c["name"] == store.listener_name]
            if clients and clients[0]["id"] != old_id and clients[0]["sub"] == "2":  # done and state channels
                return
            await asyncio.sleep(0.02)


async def test_waiter_is_woken_after_the_subscriber_connection_is_killed(
        make_store: StoreFactory, admin: aioredis.Redis) -> None:
    waiting, writer = await make_store(), await make_store()
    old_id = await kill_listener(admin, waiting)
    await wait_until_resubscribed(admin, waiting, old_id)
    record = new_record()
    await writer.create(record)
    waiter = await waiting_for(waiting, record.correlation_id)
    await writer.transition(record.correlation_id, Status.COMPLETED, result="after reconnect")
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.status == Status.COMPLETED and got.result == "after reconnect"


async def test_completion_whose_publish_was_missed_wakes_the_waiter_after_reconnect(
        make_store: StoreFactory, admin: aioredis.Redis) -> None:
    store = await make_store()
    record = new_record()
    await store.create(record)
    waiter = await waiting_for(store, record.correlation_id)
    # Finish the record without a publish, as if it was published while the subscriber was away.
    done = msgspec.structs.replace(record, status=Status.COMPLETED, completed_at=time.time())
    await admin.hset(store._req_key(record.correlation_id),
                     mapping={"d": msgspec.msgpack.encode(done), "s": "COMPLETED"})
    assert not waiter.done()
    await kill_listener(admin, store)
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.status == Status.COMPLETED


async def test_cleanup_repairs_counts_and_sessions_of_records_redis_already_expired(
        make_store: StoreFactory, admin: aioredis.Redis) -> None:
    store = await make_store(ttl_s=0.2)
    session = uuid.uuid4().hex
    done, pending = new_record(session_id=session), new_record(session_id=session)
    await store.create(done)
    await store.create(pending)
    await store.transition(done.correlation_id, Status.COMPLETED)
    # Redis expiry has no event a client can await; poll the key, bounded in time.
    async with asyncio.timeout(10):
        while await store.get(done.correlation_id) is not None:
            await asyncio.sleep(0.05)
    assert (await store.counts()).get("COMPLETED") == 1  # stale until cleanup, as documented
    assert [r.correlation_id for r in await store.list_session(session)] == [pending.correlation_id]
    assert await store.cleanup(older_than=time.time() + 1) == 1
    assert await store.counts() == {"PENDING": 1}
    assert await admin.zcard(f"{store._prefix}:session:{session}") == 1


async def test_concurrent_non_terminal_updates_all_land_through_compare_and_set(
        make_store: StoreFactory) -> None:
    first, second = await make_store(), await make_store()
    record = new_record()
    await first.create(record)
    updates = [store.transition(record.correlation_id, Status.RETRY, error=f"e{n}")
               for n in range(30) for store in (first, second)]
    results = await asyncio.gather(*updates)
    assert all(result is not None for result in results)  # none lost to a conflict
    got = await first.get(record.correlation_id)
    assert got is not None and got.status == Status.RETRY
    assert await first.counts() == {"RETRY": 1}


async def test_terminal_records_carry_a_redis_ttl(make_store: StoreFactory, admin: aioredis.Redis) -> None:
    store = await make_store(ttl_s=60)
    record = new_record()
    await store.create(record)
    assert await admin.pttl(store._req_key(record.correlation_id)) == -1
    await store.transition(record.correlation_id, Status.FAILED, error="x")
    assert 0 < await admin.pttl(store._req_key(record.correlation_id)) <= 60_000


async def test_a_request_left_processing_with_its_message_nowhere_is_reconciled_to_failed(
        make_store: StoreFactory) -> None:
    app = OpenHQM(Settings(worker={"max_timeout_s": 60}))
    async with MemoryBackend(app.settings) as backend:
        bridge = Bridge(app, backend, await make_store(), Routing(app.handlers, "echo"))
        record = await bridge.submit(Envelope(handler="echo", body=b"{}", content_type="application/json"))
        delivery = await anext(aiter(backend.consume(bridge.request_queue)))
        await delivery.ack()  # a broken worker acknowledged it and never finished it
        await bridge.store.transition(record.correlation_id, Status.PROCESSING, attempts=1)
        later = time.time() + bridge.housekeeping.stale_after_s + 1
        assert await bridge.housekeeping.reconcile(later) == 1
        got = await bridge.store.get(record.correlation_id)
        assert got is not None and got.status == Status.FAILED
        [entry] = await bridge.dead_letters()
        assert (entry.correlation_id, entry.reason, entry.attempts) == (
            record.correlation_id, "reconciled_missing", 1)
        assert await bridge.housekeeping.reconcile(later) == 0
        assert await bridge.store.oldest_unfinished() is None


async def test_the_oldest_unfinished_request_is_told_past_finished_and_vanished_ones(
        make_store: StoreFactory, admin: aioredis.Redis) -> None:
    store = await make_store()
    finished, oldest, newer = (new_record(submitted_at=1000.0), new_record(submitted_at=1001.0),
                               new_record(submitted_at=1002.0))
    for record in (newer, finished, oldest):
        await store.create(record)
    await store.transition(finished.correlation_id, Status.COMPLETED)
    # entries whose record is gone (keys changed outside the scripts) are stepped over
    await admin.zadd(f"{store._prefix}:unfinished", {f"gone{n}": 900.0 + n for n in range(20)})
    assert await store.oldest_unfinished() == 1001.0
    assert [r.correlation_id for r in await store.unfinished_submitted_before(1001.5, limit=1)] == [
        oldest.correlation_id]
    await admin.zrem(f"{store._prefix}:unfinished", *[f"gone{n}" for n in range(20)])
    await store.transition(oldest.correlation_id, Status.CANCELLED)
    await store.delete(newer.correlation_id)
    assert await store.oldest_unfinished() is None


async def test_records_written_before_the_unfinished_index_are_not_reconciled_and_still_work(
        make_store: StoreFactory, admin: aioredis.Redis) -> None:
    store = await make_store()
    legacy, current = new_record(submitted_at=1000.0), new_record(submitted_at=1001.0)
    for record in (legacy, current):
        await store.create(record)
    await admin.zrem(f"{store._prefix}:unfinished", legacy.correlation_id)  # as an older version wrote it
    assert [r.correlation_id for r in await store.unfinished_submitted_before(2000.0)] == [current.correlation_id]
    assert await store.oldest_unfinished() == 1001.0
    assert await store.transition(legacy.correlation_id, Status.PROCESSING) is not None
    assert await store.transition(legacy.correlation_id, Status.COMPLETED, completed_at=1.0) is not None
    assert await store.cleanup(older_than=time.time()) == 1
    assert await store.counts() == {"PENDING": 1}


async def test_more_concurrent_calls_than_the_pool_holds_wait_for_a_connection(make_store: StoreFactory) -> None:
    """A worker running 100 jobs plus its housekeeping once met redis-py's "Too many connections"
    (its default pool fails at 100 in use): each job over the count failed its store write."""
    store = await make_store()
    records = [new_record() for _ in range(POOL_SIZE + 50)]
    await asyncio.gather(*(store.create(record) for record in records))
    got = await asyncio.gather(*(store.get(record.correlation_id) for record in records))
    assert all(record is not None for record in got)
