"""How a finished request's reply is delivered and its message acked: the one choice the runtime makes
per process.

A reply must be durably accepted before the request is acked. Over the broker that means published to
the response queue the listener consumes, then acked (`BrokerReplies`); when the listener runs in the
same process (`openhqm serve`) the bridge stores it and acks (`LocalReplies`), which saves a broker
round trip and is just as durable: the result store is where it ends up anyway. Where the SQLite queue
and store share their file, that store and ack are one transaction (listener/settle.py).

A dead-lettered attempt's record goes into the store's dead-letter index before its FAILED reply (in
that same transaction where there is one); when the store refuses it, the broker's own dead-letter
queue takes the message instead, and no reply is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from openhqm.backends.base import Backend, Delivery
from openhqm.envelope import Reply, encode
from openhqm.listener.settle import kept
from openhqm.results.base import DeadLetterRecord, ResultStore

# Stores a reply and acks its delivery (the bridge's finish_reply); False as ReplyRoute.finish.
ReplySink = Callable[[Reply, Delivery, DeadLetterRecord | None], Awaitable[bool]]


class ReplyRoute(Protocol):
    async def finish(self, delivery: Delivery, reply_to: str | None, reply: Reply, priority: int,
                     dead_letter: DeadLetterRecord | None = None) -> bool:
        """Record `dead_letter` (when given), deliver `reply` to `reply_to` (when the request names one),
        then ack `delivery`. False when the store refused the dead letter: the message went to the
        broker's dead-letter queue, and nothing else happened."""


class BrokerReplies:
    """Publish the reply to the queue the request names (`reply_to`)."""

    def __init__(self, backend: Backend, store: ResultStore) -> None:
        self.backend = backend
        self.store = store

    async def finish(self, delivery: Delivery, reply_to: str | None, reply: Reply, priority: int,
                     dead_letter: DeadLetterRecord | None = None) -> bool:
        if dead_letter is not None and not await kept(self.store, delivery, dead_letter):
            return False
        if reply_to:
            await self.backend.publish(reply_to, encode(reply), priority=priority)
        await delivery.ack()
        return True


class LocalReplies:
    """Apply replies addressed to this process's own response queue here; a request submitted by
    another listener (its own response queue) still gets its reply over the broker."""

    def __init__(self, response_queue: str, apply: ReplySink, broker: BrokerReplies) -> None:
        self.response_queue = response_queue
        self.apply = apply
        self.broker = broker

    async def finish(self, delivery: Delivery, reply_to: str | None, reply: Reply, priority: int,
                     dead_letter: DeadLetterRecord | None = None) -> bool:
        if reply_to == self.response_queue:
            return await self.apply(reply, delivery, dead_letter)
        return await self.broker.finish(delivery, reply_to, reply, priority, dead_letter)

