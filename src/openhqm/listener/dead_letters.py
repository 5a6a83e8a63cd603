"""Dead letters: list, purge, and replay one as a new request (all or nothing)."""

from __future__ import annotations

import time

import msgspec

from openhqm.envelope import Envelope, decode_envelope, new_id
from openhqm.errors import NotFound, UndecodableMessage
from openhqm.listener.intake import Intake
from openhqm.results.base import DeadLetterRecord, RequestRecord, ResultStore
from openhqm.routing import Routing


class DeadLetters:
    def __init__(self, store: ResultStore, intake: Intake, routing: Routing) -> None:
        self.store = store
        self.intake = intake
        self.routing = routing

    async def list(self, limit: int = 100) -> list[DeadLetterRecord]:
        return await self.store.list_dead_letters(limit)

    async def purge(self) -> int:
        return await self.store.purge_dead_letters()

    async def replay(self, dead_letter_id: str) -> tuple[RequestRecord, DeadLetterRecord]:
        """Queue a dead letter again as a new request: (the new request, the entry it came from)."""
        entry = await self.store.take_dead_letter(dead_letter_id)
        if entry is None:
            raise NotFound(f"no dead letter with id {dead_letter_id!r}")
        try:
            envelope = self._again(entry)
            return await self.intake.submit(envelope), entry
        except Exception:
            await self.store.add_dead_letter(entry)  # put it back: replay is all or nothing
            raise

    def _again(self, entry: DeadLetterRecord) -> Envelope:
        """The dead message as a fresh request: a new id, a first attempt, no schedule of its own."""
        try:
            original = decode_envelope(entry.body)
        except UndecodableMessage:
            original = Envelope(body=entry.body)  # another system's raw message
        if original.endpoint is None and original.handler is None:
            endpoint, handler = self.routing.choose(None, None)
            original = msgspec.structs.replace(original, endpoint=endpoint, handler=handler)
        fresh = new_id()
        return msgspec.structs.replace(
            original, id=fresh, correlation_id=fresh, attempt=1, created_at=time.time(), not_before=None,
            deadline=None, expires_at=None, traceparent=None, raw=False,
            metadata={**original.metadata, "replay_of": entry.correlation_id or entry.id})
