"""PostgreSQL result store behaviour beyond the contract: LISTEN reconnects, lost notifications,
schema upgrades and concurrent transitions.

Runs on the machine's shared `test` database; every test uses its own tables and drops them after.
The LISTEN connection is ended with pg_terminate_backend on its own server pid, nothing broader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from openhqm.constants import Status
from openhqm.results.postgres import PostgresResultStore
from tests.contract.store_targets.postgres import unique_table
from tests.leftovers import remove_postgres_tables
from tests.records import new_record, waiting_for
from tests.services import require_service

StoreFactory = Callable[[], Awaitable[PostgresResultStore]]


@pytest.fixture
def table() -> str:
    return unique_table()


@pytest.fixture
async def admin(table: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(require_service("postgres"))
    yield conn
    await conn.close()
    await remove_postgres_tables(require_service("postgres"), table)


@pytest.fixture
async def make_store(admin: asyncpg.Connection, table: str) -> AsyncIterator[StoreFactory]:
    dsn = require_service("postgres")
    opened: list[PostgresResultStore] = []

    async def factory() -> PostgresResultStore:
        store = PostgresResultStore(dsn, table=table)
        await store.connect()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def terminate_listener(admin: asyncpg.Connection, store: PostgresResultStore) -> int:
    pid = store.listener_pid
    assert pid is not None
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    return pid


async def wait_until_listening_again(store: PostgresResultStore, old_pid: int) -> None:
    # The store exposes no reconnect event; poll its own attribute (no I/O), bounded in time.
    async with asyncio.timeout(10):
        while store.listener_pid in (None, old_pid):
            await asyncio.sleep(0.02)


async def test_waiter_is_woken_after_the_listen_connection_is_terminated(
        make_store: StoreFactory, admin: asyncpg.Connection) -> None:
    waiting, writer = await make_store(), await make_store()
    old_pid = await terminate_listener(admin, waiting)
    await wait_until_listening_again(waiting, old_pid)
    # Registered after the reconnect's re-check, so only a NOTIFY on the new connection can wake it.
    record = new_record()
    await writer.create(record)
    waiter = await waiting_for(waiting, record.correlation_id)
    await writer.transition(record.correlation_id, Status.COMPLETED, result={"n": 1})
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.status == Status.COMPLETED and got.result == {"n": 1}
    assert (await waiting.health()).ok


async def test_completion_whose_notify_was_missed_wakes_the_waiter_after_reconnect(
        make_store: StoreFactory, admin: asyncpg.Connection, table: str) -> None:
    store = await make_store()
    record = new_record()
    await store.create(record)
    waiter = await waiting_for(store, record.correlation_id)
    # Finish the record without NOTIFY, as if it was notified while the listener was away.
    await admin.execute(f"UPDATE \"{table}\" SET status = 'FAILED', completed_at = $2"
                        " WHERE correlation_id = $1", record.correlation_id, time.time())
    assert not waiter.done()
    await terminate_listener(admin, store)
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.status == Status.FAILED


async def test_connect_adds_columns_for_record_fields_the_table_lacks(
        make_store: StoreFactory, admin: asyncpg.Connection, table: str) -> None:
    store = await make_store()
    await store.close()
    await admin.execute(f'ALTER TABLE "{table}" DROP COLUMN callback_error')
    store = await make_store()
    record = new_record()
    await store.create(record)
    done = await store.transition(record.correlation_id, Status.COMPLETED, callback_error="HTTP 502")
    assert done is not None
    got = await store.get(record.correlation_id)
    assert got is not None and got.callback_error == "HTTP 502"


async def test_records_round_trip_every_field_type(make_store: StoreFactory) -> None:
    store = await make_store()
    record = new_record(session_id="s", client_id="c", target="t", not_before=1.5, callback_url="http://x/",
                        submitted_at=1000.0)
    await store.create(record)
    done = await store.transition(record.correlation_id, Status.COMPLETED, attempts=2, processing_time_ms=3.5,
                                  result={"list": [1, 2.5, None], "bytes": b"\x00\xff"},
                                  raw_response=b"\x00raw", error=None, completed_at=None)
    assert done is not None
    got = await store.get(record.correlation_id)
    assert got == done
    assert await store.cleanup(older_than=time.time() + 1) == 1  # completed_at None: by updated_at
