"""The consuming half of the Kafka backend (see `openhqm.backends.kafka` for the behaviour): a consumer-group
member behind `KafkaBackend.consume()`, plus what both halves share: topic names, record headers and the
one mapping of aiokafka errors. The backend imports this module, never the reverse (`GroupHost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as kafka_errors

from openhqm.backends.kit import Admit, ErrorMap, Wire, admission
from openhqm.errors import BackendError, BackendUnavailable, OpenHQMError
from openhqm.policies import Reconnect

log = logging.getLogger(__name__)

_POLL_TIMEOUT_MS = 1000
Headers = list[tuple[str, bytes]]  # a Kafka record's headers, as aiokafka takes them


def _retriable(exc: BaseException, action: str) -> OpenHQMError | None:
    """aiokafka flags the errors worth retrying on the class (`retriable`), not by type."""
    return BackendUnavailable(ERRORS.describe(action, exc)) if getattr(exc, "retriable", False) else None


ERRORS = ErrorMap("kafka", [
    ((kafka_errors.KafkaTimeoutError, kafka_errors.KafkaUnavailableError, kafka_errors.BrokerNotAvailableError,
      OSError), BackendUnavailable),
    (kafka_errors.KafkaError, BackendError),
], refine=_retriable)


def delay_topic(queue: str) -> str:
    return queue + ".delay"


class GroupHost(Protocol):
    """What a group member needs of its backend (KafkaBackend), so this module does not import it."""

    consumers: set[GroupConsumer]

    async def produce(self, queue: str, topic: str, body: bytes, *, key: bytes | None,
                      headers: Headers, timeout_s: float | None = None) -> Any: ...


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
        if offset in self._open:
            self._open[offset] = True
        while self._open and self._open[next(iter(self._open))]:  # the oldest open offset is settled
            self.committable = self._open.popitem(last=False)[0] + 1


@dataclass(eq=False)
class FetchedRecord:
    """A fetched record on its way through a consumer: buffered, handed out, settled."""

    record: Any
    tp: TopicPartition
    offsets: _PartitionOffsets
    key: bytes | None
    message_id: str
    attempt: int
    not_before: float | None

    @classmethod
    def parse(cls, record: Any, tp: TopicPartition, offsets: _PartitionOffsets) -> FetchedRecord:
        headers = dict(record.headers)
        raw_id = headers.get(Wire.ID)
        message_id = raw_id.decode("utf-8", "replace") if raw_id else f"{tp.topic}:{tp.partition}:{record.offset}"
        return cls(record, tp, offsets, record.key, message_id, Wire.attempt(headers.get(Wire.ATTEMPT)),
                   Wire.number(headers.get(Wire.NOT_BEFORE)))


@dataclass
class _KeyTurn:
    """One record of a key is out at a time; later ones wait in fetch order."""

    holder: FetchedRecord | None = None
    reserved_for: str | None = None  # message id of a nacked record's copy, which goes next
    reserved_partition: int = -1  # where that copy is on its way to (same number in Q and Q.delay)
    waiting: deque[FetchedRecord] = field(default_factory=deque)


class GroupConsumer(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type hints
    """One consume() call: an aiokafka group member (`member`, unstarted, configured by the backend),
    its buffers and its offset trackers.

    A poll task keeps fetching (so the group never sees an idle member) into `_ready`, which the
    consume() iterator drains; buffers past `limit` pause the partitions instead. Nothing fetched needs
    handing back on close: leaving the group hands the partitions, uncommitted offsets included, over.
    """

    def __init__(self, host: GroupHost, queue: str, member: Any, *, limit: int, rebalance_grace_s: float,
                 commit_timeout_s: float) -> None:
        self.host = host
        self.queue = queue
        self._kafka = member
        self._limit = limit
        self._rebalance_grace_s = rebalance_grace_s
        self._commit_timeout_s = commit_timeout_s
        self._offsets: dict[TopicPartition, _PartitionOffsets] = {}
        self._revoking: set[TopicPartition] = set()
        self._turns: dict[bytes, _KeyTurn] = {}
        self._ready: deque[FetchedRecord] = deque()
        self._delayed: dict[FetchedRecord, asyncio.TimerHandle] = {}  # held until their not-before time
        self._out: set[FetchedRecord] = set()  # handed out, not settled yet
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._error: OpenHQMError | None = None
        self._intake_open = True
        self.closed = False

    # -- life cycle --

    async def start(self) -> None:
        with ERRORS(f"join the consumer group of {self.queue!r}"):
            await self._kafka.start()
        self._kafka.subscribe([self.queue, delay_topic(self.queue)], listener=self)
        self._poller = asyncio.create_task(self._poll())

    async def stop_intake(self) -> None:
        """The iterator ended: fetch no more, but stay in the group until handed-out deliveries settle."""
        self._intake_open = False
        await self._stop_polling()
        self._ready.clear()
        await self._retire_if_done()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._settled.set()  # a rebalance waiting for settles stops waiting
        await self._stop_polling()
        # Leaving the group hands the partitions over at once; uncommitted records are read again.
        try:
            await self._kafka.stop()
        except asyncio.CancelledError:
            # aiokafka 0.14's fetcher.close() cancels a fetch waiting out its error backoff (the broker
            # is gone) and awaits it, raising that task's CancelledError here: not ours unless this
            # task is being cancelled. Its client is closed as stop() would have.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            with contextlib.suppress(Exception):
                await self._kafka._client.close()
        except Exception:
            log.debug("kafka: the consumer of %s did not stop cleanly", self.queue, exc_info=True)
        self.host.consumers.discard(self)

    async def _stop_polling(self) -> None:
        for timer in self._delayed.values():
            timer.cancel()
        self._delayed.clear()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _retire_if_done(self) -> None:
        """The iterator ended and its last delivery is settled: leave the group (the settle waits for it)."""
        if not self._intake_open and not self._out:
            await self.close()

    # -- fetching --

    async def _poll(self) -> None:
        reconnect = Reconnect()
        try:
            while True:
                self._apply_backpressure()
                try:
                    batches = await self._kafka.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                except kafka_errors.KafkaError as exc:
                    if not exc.retriable:
                        raise
                    log.warning("kafka: fetch from %r failed, retrying: %r", self.queue, exc)
                    await reconnect.wait()  # aiokafka already retried inside; it reconnects on its own
                    continue
                reconnect.reset()
                for records in batches.values():
                    for record in records:
                        self._admit(record)
        except Exception as exc:  # the iterator re-raises it; a dead poll task must not leave it waiting
            self._error = ERRORS.error(f"consume {self.queue!r}", exc)
            self._wake.set()

    def _apply_backpressure(self) -> None:
        kafka, assigned = self._kafka, set(self._kafka.assignment())
        held = sum(len(turn.waiting) for turn in self._turns.values())  # waiting for their key's turn
        if len(self._ready) + held >= self._limit:
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
        item = FetchedRecord.parse(record, tp, offsets)
        # An uncommitted offset keeps a record as long as needed (max_hold_s None): a crash re-reads it.
        decision = admission(item.not_before, time.time(), max_hold_s=None)
        if decision.action is Admit.HOLD:
            self._delayed[item] = asyncio.get_running_loop().call_later(decision.wait_s, self._release, item)
        else:
            self._line_up(item)

    def _release(self, item: FetchedRecord) -> None:
        del self._delayed[item]
        self._line_up(item)

    def _line_up(self, item: FetchedRecord) -> None:
        if item.key is None:
            self._hand_out(item)
            return
        turn = self._turns.setdefault(item.key, _KeyTurn())
        if turn.reserved_for == item.message_id:
            turn.reserved_for = None
            turn.waiting.appendleft(item)
        else:
            turn.waiting.append(item)
        self._next_turn(item.key, turn)

    def _next_turn(self, key: bytes, turn: _KeyTurn) -> None:
        if turn.holder is not None or turn.reserved_for is not None:
            return
        if turn.waiting:
            turn.holder = turn.waiting.popleft()
            self._hand_out(turn.holder)
        else:
            del self._turns[key]

    def _hand_out(self, item: FetchedRecord) -> None:
        self._ready.append(item)
        self._wake.set()

    async def next(self) -> FetchedRecord | None:
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

    async def settle(self, item: FetchedRecord, queue: str | None = None, topic: str = "",
                     headers: Headers | None = None) -> None:
        """Produce the copy a nack or dead letter leaves (to `topic`, of `queue`), then commit past `item`."""
        if self.closed:  # only the backend's close() closes a member with deliveries out
            raise BackendUnavailable("kafka backend is closed; the message will be delivered again")
        if self._offsets.get(item.tp) is not item.offsets:
            log.info("kafka: %s went to another consumer; it redelivers %s", item.tp, item.message_id)
        else:
            if queue is not None:
                await self._produce_copy(item, queue, topic, headers or [])
            self._finish(item)
            if item.offsets.committable > item.offsets.committed:
                await self._commit()
        await self._retire_if_done()

    async def _produce_copy(self, item: FetchedRecord, queue: str, topic: str, headers: Headers) -> None:
        # A nacked record's copy keeps its key's turn: reserved before producing, as it may be fetched at once.
        turn = self._turns.get(item.key) if item.key is not None and queue == self.queue else None
        if turn is not None:
            turn.reserved_for, turn.reserved_partition = item.message_id, item.tp.partition
        try:
            # No client waits on a copy: it may take the request timeout, as the commit after it does.
            metadata = await self.host.produce(queue, topic, item.record.value, key=item.key, headers=headers,
                                               timeout_s=self._commit_timeout_s)
        except BackendError:
            if turn is not None and turn.reserved_for == item.message_id:
                turn.reserved_for = None
            self._redeliver(item)
            raise
        if turn is not None and TopicPartition(topic, metadata.partition) not in self._offsets:
            log.warning("kafka: %s and %s differ in partitions; a key's order across retries is lost",
                        self.queue, topic)
            turn.reserved_for = None

    def _redeliver(self, item: FetchedRecord) -> None:
        """Producing the copy failed: hand the same record out again (its offset was never committed)."""
        self._out.discard(item)
        item.attempt += 1
        if self._intake_open:
            self._ready.appendleft(item)
            self._wake.set()

    def _finish(self, item: FetchedRecord) -> None:
        item.offsets.settle(item.record.offset)
        self._out.discard(item)
        self._settled.set()
        if item.key is not None and (turn := self._turns.get(item.key)) is not None and turn.holder is item:
            turn.holder = None
            self._next_turn(item.key, turn)

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit each partition's settled prefix (default: every partition not being revoked)."""
        async with self._commit_lock:
            tps = self._offsets.keys() - self._revoking if partitions is None else partitions
            pending = {tp: (o, o.committable) for tp in tps if (o := self._offsets[tp]).committable > o.committed}
            if not pending:
                return  # an older offset is still open, or the commit before ours covered it
            try:
                with ERRORS(f"commit offsets of {self.queue!r}"):
                    async with asyncio.timeout(self._commit_timeout_s):
                        await self._kafka.commit({tp: offset for tp, (_, offset) in pending.items()})
            except BackendError as exc:
                if isinstance(exc.__cause__, kafka_errors.CommitFailedError | kafka_errors.IllegalStateError):
                    log.warning("kafka: commit for %r lost to a rebalance; redelivery follows: %s", self.queue, exc)
                    return
                raise
            for offsets, offset in pending.values():
                offsets.committed = max(offsets.committed, offset)

    # -- rebalancing (aiokafka's listener callbacks) --

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self._offsets.setdefault(tp, _PartitionOffsets())

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Wait up to the grace for in-flight settles, commit what is settled, forget the rest."""
        revoked = set(revoked) & self._offsets.keys()
        if not revoked:
            return
        self._revoking |= revoked
        try:
            async with asyncio.timeout(self._rebalance_grace_s):
                while not self.closed and any(item.tp in revoked for item in self._out):
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            log.warning("kafka: deliveries of %r unsettled at a rebalance; the new owner redelivers them",
                        self.queue)
        try:
            await self._commit(revoked)
        except BackendError as exc:
            log.warning("kafka: commit before a rebalance failed; redelivery follows: %s", exc)
        self._forget(revoked)

    def _forget(self, revoked: set[TopicPartition]) -> None:
        """Drop what came from partitions that now belong to another member; it re-reads the uncommitted."""
        for tp in revoked:
            del self._offsets[tp]
        self._revoking -= revoked
        self._out = {item for item in self._out if item.tp not in revoked}
        self._ready = deque(item for item in self._ready if item.tp not in revoked)
        for item in [item for item in self._delayed if item.tp in revoked]:
            self._delayed.pop(item).cancel()
        partitions = {tp.partition for tp in revoked}
        for key, turn in list(self._turns.items()):
            turn.waiting = deque(item for item in turn.waiting if item.tp not in revoked)
            if turn.holder is not None and turn.holder.tp in revoked:
                turn.holder = None
            if turn.reserved_for is not None and turn.reserved_partition in partitions:
                turn.reserved_for = None  # the copy is in a revoked partition: its new owner delivers it
            self._next_turn(key, turn)
