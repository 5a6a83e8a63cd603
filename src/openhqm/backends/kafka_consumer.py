"""The consuming half of the Kafka backend: a consumer-group member behind `KafkaBackend.consume()`.

Also the record format both halves share (openhqm-* headers) and the one place where aiokafka errors
become openhqm errors. See `openhqm.backends.kafka` for the behaviour this implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    BrokerNotAvailableError,
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
)

from openhqm.backends.base import Delivery
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendError, BackendUnavailable

if TYPE_CHECKING:
    from openhqm.backends.kafka import KafkaBackend

log = logging.getLogger(__name__)

DELAY_SUFFIX = ".delay"
HEADER_ID = "openhqm-id"
HEADER_ATTEMPT = "openhqm-attempt"
HEADER_NOT_BEFORE = "openhqm-not-before"
HEADER_REASON = "openhqm-reason"
_OWN_HEADER_PREFIX = "openhqm-"
_POLL_TIMEOUT_MS = 1000
_UNAVAILABLE = (KafkaTimeoutError, KafkaUnavailableError, BrokerNotAvailableError)


def delay_topic(queue: str) -> str:
    return queue + DELAY_SUFFIX


def as_backend_error(exc: BaseException, action: str) -> BackendError:
    transient = isinstance(exc, (*_UNAVAILABLE, OSError, TimeoutError)) or getattr(exc, "retriable", False)
    error = BackendUnavailable if transient else BackendError
    return error(f"kafka: cannot {action}: {exc!r}")


@contextlib.contextmanager
def driver_errors(action: str) -> Iterator[None]:
    """The one place where aiokafka errors become openhqm errors."""
    try:
        yield
    except (KafkaError, OSError, TimeoutError) as exc:
        raise as_backend_error(exc, action) from exc


class _PartitionOffsets:
    """Offset tracker of one partition: settles come out of order, commits cover only the settled prefix."""

    def __init__(self) -> None:
        self._open: OrderedDict[int, bool] = OrderedDict()  # fetched offsets in fetch order -> settled?
        self.committable = -1  # highest contiguous settled offset + 1
        self.committed = -1

    def track(self, offset: int) -> None:
        if self._open and offset <= next(reversed(self._open)):
            # The log went backwards (a broker lost its data): what was tracked no longer exists.
            self._open.clear()
            self.committable = self.committed = -1
        self._open[offset] = False

    def settle(self, offset: int) -> None:
        if offset not in self._open:
            return
        self._open[offset] = True
        while self._open:
            first, settled = next(iter(self._open.items()))
            if not settled:
                break
            self._open.popitem(last=False)
            self.committable = first + 1


@dataclass(eq=False)
class _Item:
    """A fetched record on its way through a consumer: buffered, handed out, settled."""

    record: Any
    tp: TopicPartition
    offsets: _PartitionOffsets
    message_id: str
    attempt: int
    not_before: float | None

    @property
    def key(self) -> bytes | None:
        key: bytes | None = self.record.key
        return key


def _header_number(value: bytes | None, default: float | None) -> float | None:
    try:
        return float(value) if value else default
    except ValueError:
        return default


def _parse(record: Any, tp: TopicPartition, offsets: _PartitionOffsets) -> _Item:
    headers = {name: value for name, value in record.headers}
    raw_id = headers.get(HEADER_ID)
    message_id = raw_id.decode("utf-8", "replace") if raw_id else f"{tp.topic}:{tp.partition}:{record.offset}"
    attempt = int(_header_number(headers.get(HEADER_ATTEMPT), 1) or 1)
    return _Item(record, tp, offsets, message_id, max(attempt, 1),
                 _header_number(headers.get(HEADER_NOT_BEFORE), None))


def record_headers(item: _Item | None, message_id: str, ours: dict[str, str]) -> list[tuple[str, bytes]]:
    """openhqm's headers, after the foreign headers of the record being copied (kept for other readers)."""
    kept = [(name, value) for name, value in item.record.headers
            if not name.startswith(_OWN_HEADER_PREFIX)] if item is not None else []
    own = [(name, value.encode()) for name, value in ours.items()]
    return [*kept, (HEADER_ID, message_id.encode()), *own]


@dataclass
class _KeyTurn:
    """One record of a key is out at a time; later ones wait in fetch order."""

    holder: _Item | None = None
    reserved_for: str | None = None  # message id of a nacked record's copy, which goes next
    reserved_partition: int = -1  # where that copy is on its way to (same number in Q and Q.delay)
    waiting: deque[_Item] = field(default_factory=deque)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type hints
    def __init__(self, consumer: GroupConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._consumer.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._consumer.assigned(set(assigned))


class GroupConsumer:
    """One consume() call: an aiokafka group member, its buffers and its offset trackers.

    A poll task keeps fetching (so the group never sees an idle member) into `_ready`, which the
    consume() iterator drains; buffers past `max_buffered` pause the partitions instead.
    """

    def __init__(self, backend: KafkaBackend, queue: str, prefetch: int) -> None:
        self.backend = backend
        self.queue = queue
        self.options = backend.options
        self._limit = max(prefetch, self.options.max_buffered)
        self._kafka: Any = None
        self._offsets: dict[TopicPartition, _PartitionOffsets] = {}
        self._revoking: set[TopicPartition] = set()
        self._turns: dict[bytes, _KeyTurn] = {}
        self._held = 0  # records waiting for their key's turn
        self._ready: deque[_Item] = deque()
        self._delayed: list[tuple[float, int, _Item]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._out: set[_Item] = set()  # handed out, not settled yet
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._error: BackendError | None = None
        self._intake_open = True
        self.closed = False

    # -- life cycle --

    async def start(self) -> None:
        await self.backend.ensure_topics(self.queue)
        opts = self.options
        self._kafka = AIOKafkaConsumer(
            group_id=self.backend.group_id(self.queue),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Range gives partition p of Q and of Q.delay to one member: a key's retry copy comes back here.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(opts.session_timeout_s * 1000),
            heartbeat_interval_ms=int(opts.heartbeat_interval_s * 1000),
            # Members must rejoin within this; the revoke callback may wait rebalance_grace_s first.
            rebalance_timeout_ms=int((opts.rebalance_grace_s + opts.session_timeout_s) * 1000),
            **self.backend.client_options(),
        )
        with driver_errors(f"join the consumer group of {self.queue!r}"):
            await self._kafka.start()
        self._kafka.subscribe([self.queue, delay_topic(self.queue)], listener=_Listener(self))
        self._poller = asyncio.create_task(self._poll(self._kafka))

    async def stop_intake(self) -> None:
        """The iterator ended: fetch no more, but stay in the group until handed-out deliveries settle."""
        self._intake_open = False
        await self._stop_polling()
        self._ready.clear()
        self._delayed.clear()
        if not self._out:
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._settled.set()  # a rebalance waiting for settles stops waiting
        await self._stop_polling()
        if self._kafka is not None:
            # Leaving the group hands the partitions over at once; uncommitted records are read again.
            with contextlib.suppress(Exception):
                await self._kafka.stop()
        self.backend.consumers.discard(self)

    async def _stop_polling(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def _retire_if_done(self) -> None:
        if not self._intake_open and not self._out and not self.closed:
            self.backend.spawn(self.close())

    # -- fetching --

    async def _poll(self, kafka: Any) -> None:
        try:
            while True:
                self._apply_backpressure(kafka)
                try:
                    batches = await kafka.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    log.warning("kafka: fetch from %r failed, retrying: %r", self.queue, exc)
                    await asyncio.sleep(_POLL_TIMEOUT_MS / 1000)  # back off; aiokafka already retried inside
                    continue
                for records in batches.values():
                    for record in records:
                        self._admit(record)
        except Exception as exc:  # the iterator re-raises it; a dead poll task must not leave it waiting
            self._error = as_backend_error(exc, f"consume {self.queue!r}")
            self._wake.set()

    def _apply_backpressure(self, kafka: Any) -> None:
        assigned = set(kafka.assignment())
        if len(self._ready) + self._held >= self._limit:
            wanted = assigned
        elif len(self._delayed) >= self._limit:
            wanted = {tp for tp in assigned if tp.topic != self.queue}
        else:
            wanted = set()
        paused = set(kafka.paused())
        if wanted - paused:
            kafka.pause(*(wanted - paused))
        if paused - wanted:
            kafka.resume(*(paused - wanted))

    def _admit(self, record: Any) -> None:
        tp = TopicPartition(record.topic, record.partition)
        offsets = self._offsets.get(tp)
        if offsets is None or tp in self._revoking:
            return  # fetched just before a rebalance: the partition's next owner reads it again
        offsets.track(record.offset)
        item = _parse(record, tp, offsets)
        if item.not_before is not None and item.not_before > time.time():
            heapq.heappush(self._delayed, (item.not_before, next(self._seq), item))
            self._arm_timer()
        else:
            self._line_up(item)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._delayed:
            wait_s = max(0.0, self._delayed[0][0] - time.time())
            self._timer = asyncio.get_running_loop().call_later(wait_s, self._release_due)

    def _release_due(self) -> None:
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            self._line_up(heapq.heappop(self._delayed)[2])
        self._arm_timer()

    def _line_up(self, item: _Item) -> None:
        if item.key is None:
            self._hand_out(item)
            return
        turn = self._turns.setdefault(item.key, _KeyTurn())
        if turn.reserved_for == item.message_id:
            turn.reserved_for = None
            turn.waiting.appendleft(item)
        else:
            turn.waiting.append(item)
        self._held += 1
        self._next_turn(item.key, turn)

    def _next_turn(self, key: bytes, turn: _KeyTurn) -> None:
        if turn.holder is not None or turn.reserved_for is not None:
            return
        if turn.waiting:
            turn.holder = turn.waiting.popleft()
            self._held -= 1
            self._hand_out(turn.holder)
        else:
            del self._turns[key]

    def _hand_out(self, item: _Item) -> None:
        self._ready.append(item)
        self._wake.set()

    async def next(self) -> _Item | None:
        """The next record to deliver; None once closed."""
        while not self.closed:
            if self._error is not None:
                raise self._error
            while self._ready:
                item = self._ready.popleft()
                if item.tp not in self._revoking and self._offsets.get(item.tp) is item.offsets:
                    self._out.add(item)
                    return item
            self._wake.clear()
            await self._wake.wait()
        return None

    # -- settling --

    def _still_mine(self, item: _Item) -> bool:
        if self.backend.closed:
            raise BackendUnavailable("kafka backend is closed; the message will be delivered again")
        if self._offsets.get(item.tp) is item.offsets:
            return True
        log.info("kafka: %s went to another consumer; it redelivers %s", item.tp, item.message_id)
        return False

    async def ack(self, item: _Item) -> None:
        if self._still_mine(item):
            self._finish(item)
            await self._commit(item)
        self._retire_if_done()

    async def nack(self, item: _Item, delay_s: float | None) -> None:
        if self._still_mine(item):
            turn = self._turns.get(item.key) if item.key is not None else None
            if turn is not None:  # set before producing: the copy may be fetched at once
                turn.reserved_for, turn.reserved_partition = item.message_id, item.tp.partition
            ours = {HEADER_ATTEMPT: str(item.attempt + 1)}
            if delay_s:
                ours[HEADER_NOT_BEFORE] = repr(time.time() + delay_s)
            topic = delay_topic(self.queue) if delay_s else self.queue
            try:
                metadata = await self.backend.produce(self.queue, topic, item.record.value, key=item.key,
                                                      headers=record_headers(item, item.message_id, ours))
            except BackendError:
                if turn is not None and turn.reserved_for == item.message_id:
                    turn.reserved_for = None
                self._redeliver(item)
                raise
            if turn is not None and TopicPartition(topic, metadata.partition) not in self._offsets:
                log.warning("kafka: %s and %s differ in partitions; a key's order across retries is lost",
                            self.queue, topic)
                turn.reserved_for = None
            self._finish(item)
            await self._commit(item)
        self._retire_if_done()

    async def dead_letter(self, item: _Item, reason: str) -> None:
        if self._still_mine(item):
            dlq = dead_letter_queue(self.queue)
            try:
                headers = record_headers(item, item.message_id, {HEADER_REASON: reason})
                await self.backend.produce(dlq, dlq, item.record.value, key=item.key, headers=headers)
            except BackendError:
                self._redeliver(item)
                raise
            self._finish(item)
            await self._commit(item)
        self._retire_if_done()

    def _redeliver(self, item: _Item) -> None:
        """Producing the copy failed: hand the same record out again (its offset was never committed)."""
        self._out.discard(item)
        item.attempt += 1
        if self._intake_open:
            self._ready.appendleft(item)
            self._wake.set()

    def _finish(self, item: _Item) -> None:
        item.offsets.settle(item.record.offset)
        self._out.discard(item)
        self._settled.set()
        turn = self._turns.get(item.key) if item.key is not None else None
        if item.key is not None and turn is not None and turn.holder is item:
            turn.holder = None
            self._next_turn(item.key, turn)

    async def _commit(self, item: _Item) -> None:
        offsets = item.offsets
        if offsets.committable <= offsets.committed:
            return  # an older offset of the partition is still open, or a concurrent commit covered this one
        async with self._commit_lock:
            if item.tp in self._revoking or offsets.committable <= offsets.committed:
                return  # the rebalance commits it, or the commit before ours covered it
            await self._send_commit({tp: (o, o.committable) for tp, o in self._offsets.items()
                                     if o.committable > o.committed and tp not in self._revoking})

    async def _send_commit(self, pending: dict[TopicPartition, tuple[_PartitionOffsets, int]]) -> None:
        try:
            with driver_errors(f"commit offsets of {self.queue!r}"):
                async with asyncio.timeout(self.options.request_timeout_s):
                    await self._kafka.commit({tp: offset for tp, (_, offset) in pending.items()})
        except BackendError as exc:
            if isinstance(exc.__cause__, CommitFailedError | IllegalStateError):
                log.warning("kafka: commit for %r lost to a rebalance; redelivery follows: %s",
                            self.queue, exc)
                return
            raise
        for offsets, offset in pending.values():
            offsets.committed = max(offsets.committed, offset)

    # -- rebalancing --

    def assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._offsets.setdefault(tp, _PartitionOffsets())

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        revoked &= self._offsets.keys()
        if not revoked:
            return
        self._revoking |= revoked
        await self._wait_for_settles(revoked)
        async with self._commit_lock:
            pending = {tp: (o, o.committable) for tp in revoked
                       if (o := self._offsets[tp]).committable > o.committed}
            if pending:
                try:
                    await self._send_commit(pending)
                except BackendError as exc:
                    log.warning("kafka: commit before a rebalance failed; redelivery follows: %s", exc)
        self._forget(revoked)

    async def _wait_for_settles(self, revoked: set[TopicPartition]) -> None:
        deadline = time.monotonic() + self.options.rebalance_grace_s
        while not self.closed and any(item.tp in revoked for item in self._out):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("kafka: deliveries of %r unsettled at a rebalance; the new owner redelivers them",
                            self.queue)
                return
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._settled.wait()

    def _forget(self, revoked: set[TopicPartition]) -> None:
        """Drop what came from partitions that now belong to another member; it re-reads the uncommitted."""
        for tp in revoked:
            del self._offsets[tp]
        self._revoking -= revoked
        self._out = {item for item in self._out if item.tp not in revoked}
        self._ready = deque(item for item in self._ready if item.tp not in revoked)
        self._delayed = [entry for entry in self._delayed if entry[2].tp not in revoked]
        heapq.heapify(self._delayed)
        self._arm_timer()
        partitions = {tp.partition for tp in revoked}
        for key, turn in list(self._turns.items()):
            kept = deque(item for item in turn.waiting if item.tp not in revoked)
            self._held -= len(turn.waiting) - len(kept)
            turn.waiting = kept
            if turn.holder is not None and turn.holder.tp in revoked:
                turn.holder = None
            if turn.reserved_for is not None and turn.reserved_partition in partitions:
                turn.reserved_for = None  # the copy is in a revoked partition: its new owner delivers it
            self._next_turn(key, turn)


class KafkaDelivery(Delivery):
    def __init__(self, consumer: GroupConsumer, item: _Item) -> None:
        key = item.key.decode("utf-8", "replace") if item.key is not None else None
        super().__init__(consumer.queue, item.record.value or b"", attempt=item.attempt,
                         message_id=item.message_id, key=key)
        self._consumer = consumer
        self._item = item

    async def _ack(self) -> None:
        await self._consumer.ack(self._item)

    async def _nack(self, delay_s: float | None) -> None:
        await self._consumer.nack(self._item, delay_s)

    async def _dead_letter(self, reason: str) -> None:
        await self._consumer.dead_letter(self._item, reason)


