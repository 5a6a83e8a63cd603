"""Bounded waits on a state that offers no event to await (a broker reconnecting, a consumer list).

Each poll names what it waits for; the timeout makes a hang a failure with that name in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from openhqm.backends import Backend
from openhqm.errors import BackendUnavailable

POLL_INTERVAL_S = 0.05


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Return once `condition()` is true; fail naming `what` after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = condition()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


async def publish_once_reachable(
    backend: Backend, queue: str, body: bytes, *, timeout_s: float = 60,
    refusal: type[Exception] = BackendUnavailable,
) -> None:
    """Publish as soon as the backend has its broker back; until then publish raises `refusal`."""

    async def published() -> bool:
        try:
            await backend.publish(queue, body)
        except refusal:
            return False
        return True

    await wait_until(published, timeout_s=timeout_s, what=f"{backend.name} accepts a publish again")
