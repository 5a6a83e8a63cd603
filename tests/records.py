"""Small builders shared by the result-store tests."""

from __future__ import annotations

import asyncio
import uuid

from openhqm.results import RequestRecord, ResultStore


def new_record(**fields: object) -> RequestRecord:
    """A PENDING record with a fresh correlation id; `fields` override any other field."""
    return RequestRecord(correlation_id=uuid.uuid4().hex, **fields)  # type: ignore[arg-type]


async def waiting_for(
    store: ResultStore, correlation_id: str, timeout_s: float = 30
) -> asyncio.Task[RequestRecord | None]:
    """`store.wait(correlation_id)` as a task, returned once it has registered and read the record:
    from then on only a wake-up can finish it (what the sleep before a change used to hope for).

    It is the two steps of `ResultStore.wait`, taken apart so the test knows when the first is done.
    """
    has_read = asyncio.Event()

    async def wait() -> RequestRecord | None:
        with store.waiting(correlation_id) as finished:
            record = await store.get(correlation_id)
            has_read.set()
            return await store.until_terminal(correlation_id, finished, record, timeout_s)

    task = asyncio.ensure_future(wait())
    read = asyncio.ensure_future(has_read.wait())
    await asyncio.wait({task, read}, return_when=asyncio.FIRST_COMPLETED)
    read.cancel()
    return task
