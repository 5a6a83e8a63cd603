"""JetStream pull requests answered on a private inbox, for the NATS backend (nats_jetstream.py).

nats-py's `fetch(batch)` waits for the whole batch (or its timeout) once a first message has come;
a worker wants each message as it arrives. So one request is open at a time: it asks for `batch`
messages and lingers PULL_EXPIRES_S, after which the server answers 408. No answer at all by then
plus PULL_GRACE_S means the request was lost (a reconnect, a deleted consumer): the consumer is
ensured again and a new request goes out. Also here: the driver-error map of both modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from openhqm.backends.kit import ErrorMap, PrefetchBuffer, reraise_swallowed_cancel
from openhqm.errors import BackendError, BackendUnavailable

API_PREFIX = "$JS.API"
PULL_EXPIRES_S = 5.0
PULL_GRACE_S = 2.0  # a pull request with no answer at all by its expiry plus this was lost
STOP_TIMEOUT_S = 2.0


class JetStreamMissing(BackendError):
    """The stream or consumer does not exist (deleted, or the server lost its state)."""


errors = ErrorMap("nats", [
    ((nats.js.errors.NotFoundError, nats.js.errors.NoStreamResponseError), JetStreamMissing),
    ((nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionClosedError, nats.errors.NoServersError,
      nats.errors.StaleConnectionError, nats.errors.ConnectionReconnectingError,
      nats.errors.OutboundBufferLimitError, OSError), BackendUnavailable),
    (nats.errors.Error, BackendError),
])


def _status(msg: Msg) -> str | None:
    """The status of a server's control message (404/408/409 end a pull request); None on a message."""
    return (msg.headers or {}).get("Status")


async def _give_back(item: tuple[float, Msg]) -> None:
    if _status(item[1]) is None:
        await item[1].nak()


class Puller:
    """Pull requests for one durable; `next()` hands out each message as it arrives, `stop()` nak's
    those pulled but never handed out. A message that waited here longer than `max_age_s` (the
    lease) is skipped: the server has already given it to someone else."""

    def __init__(self, connection: Callable[[], NATS], stream: str, durable: str, *, batch: int,
                 max_age_s: float, ensure_consumer: Callable[[], Awaitable[None]]) -> None:
        self.durable = durable
        self.batch = max(1, batch)
        self._connection = connection
        self._next_subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._max_age_s = max_age_s
        self._ensure_consumer = ensure_consumer
        # (arrival, message): room for a whole batch and the status that ends its request.
        self._inbox: PrefetchBuffer[tuple[float, Msg]] = PrefetchBuffer(self.batch + 1, _give_back)
        self._sub: Subscription | None = None
        self._wanted = 0
        self._deadline = 0.0

    async def _on_message(self, msg: Msg) -> None:
        await self._inbox.put((time.monotonic(), msg))

    async def next(self) -> Msg | None:
        """The next message, or None once stopped."""
        if self._inbox.closed:
            return None
        if self._sub is None:
            await self._ensure_consumer()
            nc = self._connection()
            with errors("subscribe"):
                self._sub = await nc.subscribe(nc.new_inbox(), cb=self._on_message)
        while True:
            if self._wanted == 0:
                await self._request()
            try:
                async with asyncio.timeout(self._deadline - time.monotonic()):
                    item = await self._inbox.get()
            except TimeoutError:
                self._wanted = 0
                await self._ensure_consumer()
                continue
            if item is None:
                return None
            arrived, msg = item
            status = _status(msg)
            if status is None:
                self._wanted -= 1
                if time.monotonic() - arrived < self._max_age_s:
                    return msg
            if status != "100":  # 404/408: the request is over; 409: the server ended it
                self._wanted = 0

    async def _request(self) -> None:
        if self._sub is None:
            raise BackendUnavailable("nats: this consumer's inbox is closed")
        request = {"batch": self.batch, "expires": int(PULL_EXPIRES_S * 1e9)}
        with errors("pull"):
            await self._connection().publish(self._next_subject, json.dumps(request).encode(),
                                             reply=self._sub.subject)
        reraise_swallowed_cancel()
        self._wanted = self.batch
        self._deadline = time.monotonic() + PULL_EXPIRES_S + PULL_GRACE_S

    async def stop(self) -> None:
        """End a waiting next(), and give back what was pulled but never handed out (best effort)."""
        await self._inbox.close()  # from now on, what still arrives is nak'ed as it comes
        sub, self._sub = self._sub, None
        with contextlib.suppress(Exception):
            if sub is not None:
                # Drain: unsubscribe, and wait until what the server sent before that has arrived.
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await sub.drain()  # type: ignore[no-untyped-call]
