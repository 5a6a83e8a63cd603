"""A Kafka send bounded in time: a record the broker has not acknowledged by the deadline is withdrawn.

aiokafka keeps a record in its buffer until a broker takes it, for up to `request_timeout_s`, and
sends it again after a broken connection. A submit cannot wait that long (issue 14: its 503 within
1 s), and a record reported refused must not reach the queue afterwards. So when the deadline passes,
the record's batch is taken out of aiokafka's buffer and failed (every record in it is refused, each
caller told so); a batch on the wire at that moment is marked withdrawn, so aiokafka fails it rather
than sending it again once the connection breaks. What a broker may already have stored before it
died (sent, never acknowledged) cannot be called back: such a request's store record is gone by
then, and the worker skips a message whose record is gone (worker/processor.py `_claim`).

aiokafka has no public API for this: `withdraw` reaches into its accumulator (0.14), as
`KafkaBackend._refuse_unless_reachable` reaches into its client.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiokafka.errors import KafkaTimeoutError


async def send_within(producer: Any, deadline: float, topic: str, body: bytes, *, key: bytes | None,
                      headers: list[tuple[str, bytes]]) -> Any:
    """The record's metadata once acknowledged; KafkaTimeoutError (its record withdrawn) at `deadline`
    (the event loop's clock)."""
    sent: asyncio.Future[Any] | None = None
    try:
        async with asyncio.timeout_at(deadline):
            sent = await producer.send(topic, body, key=key, headers=headers)
            return await asyncio.shield(sent)
    except TimeoutError:
        if sent is None:  # still waiting for the topic's metadata or room in the buffer: nothing queued
            raise KafkaTimeoutError(f"no broker answered for {topic!r} in time") from None
        if sent.done() and not sent.cancelled() and sent.exception() is None:
            return sent.result()  # acknowledged just as the deadline passed
        if not sent.done():
            withdraw(producer, sent)
        sent.add_done_callback(_retrieved)  # its outcome is no one's now
        raise KafkaTimeoutError(f"no broker acknowledged the record to {topic!r} in time; withdrawn") from None


def withdraw(producer: Any, sent: asyncio.Future[Any]) -> None:
    """Fail the batch holding `sent`: out of the buffer if waiting there; marked expired if on the wire."""
    accumulator = producer._message_accumulator
    refused = KafkaTimeoutError("withdrawn: no broker acknowledged it in time")
    for tp, queued in list(accumulator._batches.items()):
        for batch in queued:
            if _holds(batch, sent):
                queued.remove(batch)
                if not queued:
                    del accumulator._batches[tp]  # drain_by_nodes reads queued[0] of every key
                if batch.retry_count:  # sent before: its done-callback removes it from the pending set
                    accumulator._pending_batches.add(batch)
                batch.failure(refused)
                return
    for batch in accumulator._pending_batches:
        if _holds(batch, sent):
            batch._ttl = 0.0  # expired: a send that fails from now on is not retried (`_can_retry`)
            _withdrawn(accumulator).add(batch)  # one that failed already waits to be re-queued
            return


def _withdrawn(accumulator: Any) -> weakref.WeakSet[Any]:
    """The batches withdrawn while on the wire. A send that failed just before waits out a backoff and
    then puts its batch back in the buffer (`reenqueue`), which would send it again: for these, the
    accumulator's reenqueue fails them instead."""
    withdrawn: weakref.WeakSet[Any] | None = getattr(accumulator, "_openhqm_withdrawn", None)
    if withdrawn is None:
        withdrawn = accumulator._openhqm_withdrawn = weakref.WeakSet()
        requeue = accumulator.reenqueue

        def reenqueue(batch: Any) -> None:
            if batch in withdrawn:
                batch.failure(KafkaTimeoutError("withdrawn: no broker acknowledged it in time"))
                return  # its done-callback takes it out of the pending set
            requeue(batch)

        accumulator.reenqueue = reenqueue
    return withdrawn


def _retrieved(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled():
        sent.exception()


def _holds(batch: Any, sent: asyncio.Future[Any]) -> bool:
    return any(future is sent for future, _ in batch._msg_futures)
