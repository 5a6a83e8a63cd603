"""An example third-party backend: the in-process memory backend, counting what it publishes.

A real package would wrap its broker's client the same way: subclass `openhqm.backends.Backend`
(or an existing backend), declare honest `Capabilities`, and register under `openhqm.backends`.
"""

from __future__ import annotations

from openhqm.backends.memory import MemoryBackend
from openhqm.constants import DEFAULT_PRIORITY


class CountingMemoryBackend(MemoryBackend):
    name = "example-memory"

    published = 0

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None, message_id: str | None = None) -> None:
        await super().publish(queue, body, priority=priority, delay_s=delay_s, key=key, message_id=message_id)
        type(self).published += 1
