"""What every broker file shares, once (kombu keeps the same in `transport/virtual`).

- `Wire`: the message headers/attributes/properties openhqm writes beside a body, one spelling,
  one unit (seconds since the epoch for times, decimal strings on the wire).
- `ErrorMap`: the one place where a driver's exceptions become openhqm's, per backend a table;
  `connected`: the one error for a call before connect() or after close().
- `percent_encoded`: queue names made into the resource names a broker accepts.
- `admission`: the pure "deliver, hold or re-post" decision of brokers without (long enough) delays;
  `within_limit`: the dead letter of a message past the broker's delivery limit.
- `PrefetchBuffer`: messages fetched ahead, handed back to the broker when the consumer closes.
- `Background` (from `openhqm/background.py`, shared with the listener): tasks started on the side,
  which close() waits for.
- `Closing`: a backend's closed flag, and the calls (long polls, blocking reads) close() abandons.
The health template and the options model live on `Backend` itself (base.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog

from openhqm.background import Background as Background  # re-exported: the backends take it from the kit
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable, OpenHQMError
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.backends.base import Delivery

log = structlog.get_logger(__name__)
V = TypeVar("V")
D = TypeVar("D", bound="Delivery")
MAX_REASON_CHARS = 1000  # a dead-letter reason travels in a header: bounded


class Wire:
    """Header names, lower case (NATS, Kafka, AMQP and MQTT user properties all accept them)."""

    PREFIX = "openhqm-"
    ID = "openhqm-id"  # the message id, where the broker has no field of its own for it
    ATTEMPT = "openhqm-attempt"  # the attempt number the next delivery of this copy gets
    NOT_BEFORE = "openhqm-not-before"  # epoch seconds; not delivered to a consumer before then
    KEY = "openhqm-key"  # the ordering key, where the broker has no field of its own for it
    REASON = "openhqm-reason"  # why a message was dead-lettered

    @staticmethod
    def number(value: Any) -> float | None:
        """A header value as a number: bytes, str or number; None when absent or unreadable."""
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if number == number else None  # NaN is unreadable

    @staticmethod
    def attempt(value: Any) -> int:
        number = Wire.number(value)
        return max(1, int(number)) if number is not None else 1

    @staticmethod
    def time(value: float) -> str:
        return repr(round(value, 6))

    @staticmethod
    def reason(text: str) -> str:
        """A reason that fits in any header: one line, bounded."""
        return " ".join(text.split())[:MAX_REASON_CHARS] or "-"

    @staticmethod
    def get(headers: Mapping[str, V] | None, name: str) -> V | None:
        """A header by its `Wire` name, whatever its case (NATS keeps the case it was sent with)."""
        return next((value for key, value in (headers or {}).items() if key.lower() == name), None)

    @staticmethod
    def carried(headers: Mapping[str, V], *dropped: str) -> dict[str, V]:
        """The headers a copy of a message keeps: all but the `dropped` Wire names, in any case
        (foreign headers travel on, for whoever else reads the queue)."""
        return {key: value for key, value in headers.items() if key.lower() not in dropped}

    @staticmethod
    def published(message_id: str | None, delay_s: float | None, now: float, key: str | None = None
                  ) -> dict[str, str]:
        """The headers of a first publish: its id (a new one unless given), its key, its due time."""
        headers = {Wire.ID: message_id or new_id()}
        if key is not None:
            headers[Wire.KEY] = key
        if delay_s is not None and delay_s > 0:
            headers[Wire.NOT_BEFORE] = Wire.time(now + delay_s)
        return headers

    @staticmethod
    def retried(headers: Mapping[str, V], attempt: int, delay_s: float | None, now: float) -> dict[str, V | str]:
        """The headers of the copy a `nack(delay_s)` publishes: the original's, with the next attempt,
        due after the delay (an earlier due time is spent)."""
        return Wire.carried(headers, Wire.NOT_BEFORE, Wire.ATTEMPT) | redelivery(attempt, delay_s, now)

    @staticmethod
    def dead_lettered(headers: Mapping[str, V], reason: str) -> dict[str, V | str]:
        """The headers of a dead letter's copy: the original's with the reason, due now, and starting
        over at attempt 1 when replayed."""
        kept = Wire.carried(headers, Wire.NOT_BEFORE, Wire.ATTEMPT, Wire.REASON)
        return kept | {Wire.REASON: Wire.reason(reason)}


Rule = tuple[type[BaseException] | tuple[type[BaseException], ...], type[BackendError]]


class ErrorMap:
    """`with errors("publish to 'q'"):` turns driver errors into BackendUnavailable/BackendError.

    Rules are tried in order, the first match wins; `refine` may pick a more specific error from the
    exception's text (e.g. Redis's NOGROUP). openhqm's own errors pass through; TimeoutError (from
    `asyncio.timeout` around a call) is always BackendUnavailable. Messages never carry passwords.
    """

    def __init__(self, broker: str, rules: Sequence[Rule],
                 refine: Callable[[BaseException, str], OpenHQMError | None] | None = None) -> None:
        self.broker = broker
        self.rules = tuple(rules)
        self.refine = refine

    def describe(self, action: str, exc: BaseException) -> str:
        detail = mask_url(str(exc)) or type(exc).__name__
        return f"{self.broker}: {action}: {detail}"

    def translate(self, action: str, exc: BaseException) -> OpenHQMError | None:
        if isinstance(exc, OpenHQMError):
            return exc
        if self.refine is not None and (refined := self.refine(exc, action)) is not None:
            return refined
        if isinstance(exc, TimeoutError):
            return BackendUnavailable(f"{self.broker}: {action}: no answer in time")
        for kinds, error in self.rules:
            if isinstance(exc, kinds):
                return error(self.describe(action, exc))
        return None

    def error(self, action: str, exc: BaseException) -> OpenHQMError:
        """`translate`, or a BackendError when no rule matches: for errors kept to be raised later."""
        return self.translate(action, exc) or BackendError(self.describe(action, exc))

    @contextlib.contextmanager
    def __call__(self, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = self.translate(action, exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc


class Admit(enum.Enum):
    DELIVER = "deliver"  # due: hand it to a consumer
    HOLD = "hold"  # due soon: keep it (unacked) and deliver after `wait_s`
    REPOST = "repost"  # due later than can be held: publish a copy due at the same time, ack this one


@dataclass(frozen=True, slots=True)
class Admission:
    action: Admit
    wait_s: float = 0.0


DELIVER = Admission(Admit.DELIVER)


def admission(not_before: float | None, now: float, *, max_hold_s: float | None) -> Admission:
    """What to do with a received message that may carry a not-before time.

    `max_hold_s`: how long this broker can keep it out of sight while unacked (its lease, a native
    delay's cap, or None for "as long as needed"). Beyond that, the message is re-posted with its
    not-before time unchanged, and the received copy acked, so its attempt count does not grow.
    """
    if not_before is None or not_before <= now:
        return DELIVER
    wait_s = not_before - now
    if max_hold_s is None or wait_s <= max_hold_s:
        return Admission(Admit.HOLD, wait_s)
    return Admission(Admit.REPOST, wait_s)


def redelivery(attempt: int, delay_s: float | None, now: float) -> dict[str, str]:
    """The headers of the copy that a `nack(delay_s)` publishes: the next attempt, due after the delay."""
    headers = {Wire.ATTEMPT: str(attempt + 1)}
    if delay_s is not None and delay_s > 0:
        headers[Wire.NOT_BEFORE] = Wire.time(now + delay_s)
    return headers


async def within_limit(delivery: D, delivered: int | None, allowed: int, limit: str) -> D | None:
    """`delivery`, or None past `allowed` deliveries: then it is moved to the dead-letter queue with a
    reason naming the `limit` setting (the broker's own limit would strand or drop it instead). A move
    that fails is logged: the message comes back after its lease, and is moved then."""
    if delivered is None or delivered <= allowed:
        return delivery
    try:
        await delivery.dead_letter(f"delivered {delivered} times; {limit}")
    except BackendError as exc:
        log.warning("dead_letter_over_limit_failed", queue=delivery.queue, error=str(exc))
    return None


T = TypeVar("T")


def percent_encoded(name: str, safe: re.Pattern[str]) -> str:
    """`name` with each character `safe` does not match written as %XX (its UTF-8 bytes): a queue name
    made into a broker's resource name, still distinct for distinct queues."""
    return "".join(c if safe.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def connected(broker: str, part: T | None) -> T:
    """`part` of a connection (a client, a channel), or BackendUnavailable while there is none."""
    if part is None:
        raise BackendUnavailable(f"{broker} backend is not connected")
    return part


class PrefetchBuffer(Generic[T]):
    """Messages fetched ahead of the consumer, bounded; `close()` hands every one not yet taken back
    to the broker through `release`, so a stopping worker does not sit on work until its lease ends."""

    def __init__(self, capacity: int, release: Callable[[T], Awaitable[None]]) -> None:
        self._items: asyncio.Queue[T] = asyncio.Queue(maxsize=max(1, capacity))
        # Taken by a get() that was then cancelled: handed out first. Not put back into `_items`,
        # whose freed slot a waiting put() may already have filled.
        self._returned: collections.deque[T] = collections.deque()
        self._release = release
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __len__(self) -> int:
        return self._items.qsize() + len(self._returned)

    @property
    def free(self) -> int:
        return max(0, self._items.maxsize - len(self))

    async def put(self, item: T) -> None:
        """Wait for room; once closed, the item goes straight back to the broker."""
        if self.closed:
            await self._release(item)
            return
        await self._items.put(item)
        if self.closed:  # closed while we waited for room
            await self._drain()

    async def get(self) -> T | None:
        """The next item, or None once closed. Cancelled while an item arrived, it keeps the item.

        Decided by the exception, never by `Task.cancelling()`: a cancel that a client library
        swallowed (nats-py's publish does) leaves that count up, and every later item would then be
        both handed out and kept."""
        if self.closed:
            return None
        if self._returned:
            return self._returned.popleft()
        if not self._items.empty():
            return self._items.get_nowait()
        getter = asyncio.ensure_future(self._items.get())
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((getter, closer), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if getter.done() and not getter.cancelled():
                await self._give_back(getter.result())
            raise
        finally:
            closer.cancel()
            if not getter.done():
                getter.cancel()
        if not getter.done() or getter.cancelled():
            return None  # closed while waiting
        if self.closed:
            await self._give_back(getter.result())
            return None
        return getter.result()

    async def _give_back(self, item: T) -> None:
        """An item taken but not handed out: to the broker once closed, else back into the buffer."""
        if self.closed:
            with contextlib.suppress(Exception):
                await self._release(item)
        else:
            self._returned.append(item)

    async def close(self) -> None:
        self._closed.set()
        await self._drain()

    async def _drain(self) -> None:
        while self._returned or not self._items.empty():
            item = self._returned.popleft() if self._returned else self._items.get_nowait()
            with contextlib.suppress(Exception):  # the broker redelivers it after its lease anyway
                await self._release(item)


def reraise_swallowed_cancel() -> None:
    """Raise the CancelledError a client library caught and dropped (nats-py's publish does, in
    `Client._flush_pending`): otherwise a cancelled consumer loops on, and whoever awaits it hangs."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Closing(asyncio.Event):
    """A backend's "closed" flag (an Event: loops test it, pauses wait on it) that also abandons
    the calls made through `unless_closed` (a long poll, a blocking read): `await close()` cancels
    them and returns once each has ended, so the connection they were using can be closed next."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: set[asyncio.Future[Any]] = set()

    async def unless_closed(self, awaitable: Awaitable[T]) -> T | None:
        """`awaitable`'s result, or None once closed (at once when closed already)."""
        task = asyncio.ensure_future(awaitable)
        if self.is_set():
            task.cancel()
        self._calls.add(task)
        try:
            await asyncio.wait({task})
        finally:
            self._calls.discard(task)
            task.cancel()
        return None if task.cancelled() else task.result()

    async def close(self) -> None:
        self.set()
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
