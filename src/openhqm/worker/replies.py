"""Where a worker's reply goes once its request is done: the one choice the runtime makes per process.

A reply must be durably accepted before the request is acked (see Processor._finish). Over the
broker that means published to the response queue the listener consumes (`BrokerReplies`); when the
listener runs in the same process (`openhqm serve`) the bridge stores it directly (`LocalReplies`),
which saves a broker round trip and is just as durable: the result store is where it ends up anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from openhqm.backends.base import Backend
from openhqm.envelope import Reply, encode

ReplySink = Callable[[Reply], Awaitable[object]]


class ReplyRoute(Protocol):
    async def send(self, reply_to: str, reply: Reply, priority: int) -> None: ...


class BrokerReplies:
    """Publish the reply to the queue the request names (`reply_to`)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def send(self, reply_to: str, reply: Reply, priority: int) -> None:
        await self.backend.publish(reply_to, encode(reply), priority=priority)


class LocalReplies:
    """Apply replies addressed to this process's own response queue here; a request submitted by
    another listener (its own response queue) still gets its reply over the broker."""

    def __init__(self, response_queue: str, apply: ReplySink, broker: BrokerReplies) -> None:
        self.response_queue = response_queue
        self.apply = apply
        self.broker = broker

    async def send(self, reply_to: str, reply: Reply, priority: int) -> None:
        if reply_to == self.response_queue:
            await self.apply(reply)
        else:
            await self.broker.send(reply_to, reply, priority)
