"""Reading requests as a client may see them: another client's request answers exactly like a
missing one (no existence leak), and cancelling works until the request ends: a running one is
stopped by its worker, which watches the store for exactly this change (worker/control.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.errors import Conflict, NotFound
from openhqm.logging import get_logger
from openhqm.results.base import RequestRecord, ResultStore

log = get_logger("openhqm.listener")

_CANCELLABLE = (Status.PENDING, Status.SCHEDULED, Status.RETRY, Status.PROCESSING)


class Reading:
    def __init__(self, settings: Settings, store: ResultStore) -> None:
        self.max_wait_s = settings.server.max_wait_s
        self.store = store

    async def get(self, correlation_id: str, client_id: str | None = None) -> RequestRecord:
        return visible(await self.store.get(correlation_id), correlation_id, client_id)

    async def wait(self, correlation_id: str, timeout_s: float, client_id: str | None = None) -> RequestRecord:
        record = await self.store.wait(correlation_id, min(timeout_s, self.max_wait_s))
        return visible(record, correlation_id, client_id)

    async def reread(self, correlation_id: str) -> RequestRecord | None:
        """The stored record as it is now, for a reader already shown it (a change stream)."""
        return await self.store.get(correlation_id)

    @contextlib.contextmanager
    def updates(self, correlation_id: str) -> Iterator[asyncio.Queue[RequestRecord]]:
        """Every change this process makes to the request, while the block runs."""
        queue = self.store.subscribe(correlation_id)
        try:
            yield queue
        finally:
            self.store.unsubscribe(correlation_id, queue)

    async def session(self, session_id: str, client_id: str | None, limit: int) -> list[RequestRecord]:
        """A session's requests in submit order, those of other clients left out."""
        records = await self.store.list_session(session_id, limit)
        return [r for r in records if client_id is None or r.client_id in (None, client_id)]

    async def cancel(self, correlation_id: str, client_id: str | None = None) -> RequestRecord:
        await self.get(correlation_id, client_id)
        record = await self.store.transition(correlation_id, Status.CANCELLED, allowed_from=_CANCELLABLE,
                                             error="cancelled by the client")
        if record is not None:
            log.info("request cancelled", correlation_id=correlation_id)
            return record
        current = await self.get(correlation_id, client_id)
        raise Conflict(f"request {correlation_id} cannot be cancelled: it is {current.status}")


def visible(record: RequestRecord | None, correlation_id: str, client_id: str | None) -> RequestRecord:
    if record is None or (client_id is not None and record.client_id not in (None, client_id)):
        raise NotFound(f"no request with id {correlation_id!r}")
    return record
