"""Redis Streams backend (Redis >= 7.0) on redis-py's asyncio client; consumer groups give at-least-once.

URL: `queue.redis.url`, e.g. `redis://:password@host:6379/0` or `rediss://...` (TLS); standalone
Redis only (not Cluster). Options: `queue.redis.lease_s` (an unsettled delivery is claimed by
another consumer after this), `queue.redis.maxlen` (publish refuses with BackendUnavailable once a
queue holds that many messages; nothing is ever trimmed), `queue.redis.max_connections`.

Per queue Q: one stream per priority with the consumer group `openhqm`, a sorted set of delayed
messages and a wake list (keys, entry fields and the Lua scripts: redis_streams_lua.py). Acked
entries are deleted (XACK + XDEL), so streams hold only unsettled messages and a lost group can be
recreated from the first entry without replaying work.

- priority: emulated; every consumer reads all 15 streams, highest first (a Lua script for ready
  entries, then one blocking XREADGROUP over all 15 streams, never a sleep).
- delay: emulated; a mover task per consumed queue moves due messages atomically (Lua) into their
  stream, waiting with BLPOP on the wake list until the next due time (at most 5 s).
- ordering key: none; `key` is stored and given back on the delivery, but not enforced.
- dead letter: emulated, atomic move to queue `Q.dlq` with a `reason` field.
- lease extension: yes, up to `lease_s` per call.
- crash: a consumer that dies leaves its entries pending; another consumer claims them with
  XAUTOCLAIM once they were idle `lease_s`, with a higher attempt. Unyielded entries of a closed
  consume() are handed back at once. Durability is the server's: with `appendonly yes` and
  `appendfsync everysec`, a Redis crash loses at most about a second of accepted messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from pydantic import Field, SecretStr
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from openhqm.backends import redis_streams_lua as lua
from openhqm.backends.base import HEALTH_TIMEOUT_S, Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kit import Closing, PrefetchBuffer, connected
from openhqm.backends.redis_streams_lua import GROUP, Entry, GroupLost, Keys, errors
from openhqm.constants import DEFAULT_PRIORITY, MAX_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable, ConfigError
from openhqm.policies import Reconnect

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript
    from redis.typing import KeyT, StreamIdT

    from openhqm.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_BLOCK_S = 5.0  # longest blocking read: bounds reclaim cadence and a missed delay wake-up
_COMMAND_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 2.0
# One retry on a fresh connection, 0.1 s on: a connection Redis closed (idle timeout, CLIENT KILL) costs
# nothing, and a Redis that is away answers 503 at once rather than after retries that wait for it.
_RETRY_DELAY_S = 0.1
_MOVE_BATCH = 100
_STALE_CONSUMER_MS = 3_600_000  # forget a consumer that holds nothing after an hour idle ...
_STALE_CHECK_S = 600.0  # ... looking for such consumers this often per reader


class RedisStreamsOptions(BackendOptions):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    lease_s: float = Field(30.0, gt=0)
    maxlen: int = Field(1_000_000, gt=0, description="publish refuses once a queue holds this many messages")
    max_connections: int = Field(64, gt=0, description="pool for commands; each consume() adds one blocking")


def _ms(seconds: float | None) -> int:
    return max(0, math.ceil((seconds or 0) * 1000))


class RedisDelivery(Delivery):
    def __init__(self, backend: RedisStreamsBackend, keys: Keys, entry: Entry) -> None:
        super().__init__(keys.queue, entry.body, attempt=entry.attempt, message_id=entry.message_id,
                         key=entry.key)
        self._backend = backend
        self._keys = keys
        self._entry = entry

    async def _apply(self, how: str, script: str, keys: list[str], extra: list[Any]) -> None:
        fence = [GROUP, self._backend.consumer, self._entry.entry_id, self._entry.count]
        if not await self._backend._call(script, keys, [*fence, *extra], how):
            log.warning("redis %s of message %s on %r had no effect: its lease (%.0f s) ran out and it "
                        "was delivered again, or the queue was purged", how, self.message_id, self.queue,
                        self._backend.options.lease_s)

    async def _ack(self) -> None:
        await self._apply("ack", lua.ACK, [self._keys.stream(self._entry.level)], [])

    async def _nack(self, delay_s: float | None) -> None:
        keys = [self._keys.stream(self._entry.level), self._keys.delayed, self._keys.wake]
        await self._apply("nack", lua.NACK, keys, [self.attempt, _ms(delay_s), self._entry.level])

    async def _dead_letter(self, reason: str) -> None:
        dlq = Keys.of(dead_letter_queue(self.queue))
        keys = [self._keys.stream(self._entry.level), dlq.stream(self._entry.level)]
        await self._apply("dead-letter", lua.DEAD_LETTER, keys, [reason])

    async def extend_lease(self, seconds: float) -> None:
        """Redis cannot set a future claim time, so one call extends by at most `lease_s`."""
        idle_ms = max(0, _ms(self._backend.options.lease_s - seconds))
        await self._apply("lease extension", lua.EXTEND, [self._keys.stream(self._entry.level)], [idle_ms])


class RedisStreamsBackend(Backend):
    name = "redis"
    options_model = RedisStreamsOptions
    options: RedisStreamsOptions
    capabilities = Capabilities(priority=Support.EMULATED, delay=Support.EMULATED, lease_extension=True,
                                max_message_bytes=512 * 1024 * 1024)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.reclaim_interval_s = min(max(self.options.lease_s / 2, 0.05), _MAX_BLOCK_S)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._redis: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None  # long reads, so they never starve commands
        self._scripts: dict[str, AsyncScript] = {}
        self._closed = Closing()
        self._movers: dict[str, tuple[asyncio.Task[None], int]] = {}  # queue -> (mover, its consumers)
        self._consumed: set[str] = set()
        self._prefetched: set[PrefetchBuffer[Entry]] = set()

    @property
    def lease_s(self) -> float | None:
        return self.options.lease_s

    def _pool(self, pool_class: type[aioredis.ConnectionPool], max_connections: int) -> aioredis.ConnectionPool:
        try:
            options: dict[str, Any] = dict(parse_url(self.options.url.get_secret_value()))
        except ValueError as exc:
            raise ConfigError(f"queue.redis.url {self.display_url} is not a Redis URL: {exc}") from exc
        # These win over query parameters of the URL. No socket_timeout: redis-py then sends through
        # asyncio.wait_for, which on Python 3.11 swallows a cancellation that arrives as the send
        # completes (CPython gh-86296), so a cancelled consume() would run on; every call is bounded
        # with asyncio.timeout instead. RESP2 keeps the reply shapes parsed here the same across
        # redis-py versions.
        options.update(
            socket_timeout=None, socket_connect_timeout=_CONNECT_TIMEOUT_S, protocol=2,
            decode_responses=False, client_name=f"openhqm-{self.consumer}",
            retry=Retry(ExponentialBackoff(cap=_RETRY_DELAY_S, base=_RETRY_DELAY_S), 1))
        return pool_class(max_connections=max_connections, **options)

    async def connect(self) -> None:
        if self._redis is not None:
            return
        commands = aioredis.Redis.from_pool(
            self._pool(aioredis.BlockingConnectionPool, self.options.max_connections))
        # One connection per open consume() and delay mover; their number is up to the caller.
        blocking = aioredis.Redis.from_pool(self._pool(aioredis.ConnectionPool, 10_000))
        try:
            with errors(f"connect to {self.display_url}"):
                async with asyncio.timeout(_COMMAND_TIMEOUT_S):
                    await commands.ping()
        except BackendError:
            await commands.aclose()
            await blocking.aclose()
            raise
        self._redis, self._blocking = commands, blocking
        self._scripts = {script: commands.register_script(script) for script in lua.SCRIPTS}
        self._closed.clear()

    async def close(self) -> None:
        """Stop readers and movers, hand back what was read ahead, drop our consumer where it holds
        nothing, then disconnect (each step needs the connection the last one closes)."""
        commands, blocking = self._redis, self._blocking
        if commands is None or blocking is None:
            return
        await self._closed.close()  # ends blocking reads and pauses
        movers = [task for task, _ in self._movers.values()]
        self._movers.clear()
        for task in movers:
            task.cancel()
        await asyncio.gather(*movers, return_exceptions=True)
        with contextlib.suppress(BackendError, TimeoutError):
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                # Together: each closes at its first step, so a timeout cannot leave one open.
                await asyncio.gather(*(buffer.close() for buffer in self._prefetched))
                for queue in self._consumed:
                    await self._call(lua.LEAVE, Keys.of(queue).streams, [GROUP, self.consumer], "leave")
        self._consumed.clear()
        self._redis = self._blocking = None
        self._scripts = {}
        await blocking.aclose()
        await commands.aclose()

    def _clients(self) -> tuple[aioredis.Redis, aioredis.Redis]:
        """The clients for commands and for blocking reads."""
        return connected("redis", self._redis), connected("redis", self._blocking)

    async def _call(self, script: str, keys: Sequence[str], args: Sequence[Any], action: str) -> Any:
        scripts = connected("redis", self._scripts or None)
        with errors(action):
            async with asyncio.timeout(_COMMAND_TIMEOUT_S):
                return await scripts[script](keys=list(keys), args=list(args))

    async def _blocking_read(self, command: Callable[[aioredis.Redis], Awaitable[T]], block_s: float,
                             action: str) -> T | None:
        """Run a blocking command on its own connection (dropped when close() abandons it)."""
        _, client = self._clients()

        async def bounded() -> T:
            async with asyncio.timeout(block_s + _COMMAND_TIMEOUT_S):
                return await command(client)

        with errors(action):
            return await self._closed.unless_closed(bounded())

    async def _pause(self, reconnect: Reconnect, what: str, exc: BaseException) -> None:
        """Wait after a failure; Redis is unreachable or broken, so there is nothing to block on."""
        log.warning("redis %s: %s; retrying in about %.1f s", what, exc, reconnect.next_delay_s)
        await reconnect.wait(self._closed)

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        if not 1 <= priority <= MAX_PRIORITY:
            raise BackendError(f"priority {priority} of a message for {queue!r} is outside 1..{MAX_PRIORITY}")
        fields = Entry.new_fields(body, message_id or new_id(), key)
        args = [self.options.maxlen, priority, _ms(delay_s), uuid.uuid4().hex, *fields]
        await self._call(lua.PUBLISH, Keys.of(queue).all, args, f"publish to {queue!r}")

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        self._clients()
        keys = Keys.of(queue)
        reader = _Reader(self, keys, max(1, prefetch))
        read_ahead = PrefetchBuffer[Entry](prefetch, functools.partial(self._hand_back, keys))
        self._consumed.add(queue)
        self._prefetched.add(read_ahead)
        self._acquire_mover(keys)
        try:
            while len(read_ahead) or await reader.fill(read_ahead):
                if (entry := await read_ahead.get()) is None:
                    break  # close() handed back what was left
                yield RedisDelivery(self, keys, entry)
        finally:
            self._prefetched.discard(read_ahead)
            self._release_mover(keys)
            await read_ahead.close()

    async def _hand_back(self, keys: Keys, entry: Entry) -> None:
        """Return an entry read but never yielded, so it need not wait out its lease."""
        with contextlib.suppress(BackendError):
            await self._call(lua.NACK, [keys.stream(entry.level), keys.delayed, keys.wake],
                             [GROUP, self.consumer, entry.entry_id, entry.count, entry.prior_attempts, 0,
                              entry.level], "hand back")

    def _acquire_mover(self, keys: Keys) -> None:
        """One delay mover per queue and backend, however many consume() calls read the queue."""
        task, users = self._movers.get(keys.queue, (None, 0))
        if task is None:
            task = asyncio.create_task(self._move_delays(keys), name=f"openhqm-redis-delays:{keys.queue}")
        self._movers[keys.queue] = (task, users + 1)

    def _release_mover(self, keys: Keys) -> None:
        task, users = self._movers.pop(keys.queue, (None, 0))
        if task is not None and users > 1:
            self._movers[keys.queue] = (task, users - 1)
        elif task is not None:
            task.cancel()

    async def _move_delays(self, keys: Keys) -> None:
        """Move due messages of one queue into its streams, then sleep in BLPOP on the wake list until
        the next is due: a publish or nack that becomes the new earliest pushes to that list. The wait
        is capped, so a wake-up taken by a mover that then died delays others by at most _MAX_BLOCK_S."""
        reconnect = Reconnect()
        while not self._closed.is_set():
            try:
                await self._move_and_wait(keys)
                reconnect.reset()
            except BackendError as exc:  # keep moving once Redis is back, whatever went wrong
                await self._pause(reconnect, f"delays of {keys.queue!r}", exc)

    async def _move_and_wait(self, keys: Keys) -> None:
        wait_ms = await self._call(lua.MOVE_DUE, keys.all, [_MOVE_BATCH], "move delays")
        wait_s = _MAX_BLOCK_S if wait_ms < 0 else min(wait_ms / 1000, _MAX_BLOCK_S)
        if wait_s > 0:
            await self._blocking_read(lambda client: client.blpop([keys.wake], timeout=wait_s), wait_s,
                                      "wait for delays")

    async def depth(self, queue: str) -> int:
        count: int = await self._call(lua.DEPTH, Keys.of(queue).all, [GROUP], f"depth of {queue!r}")
        return count

    async def purge(self, queue: str) -> int:
        count: int = await self._call(lua.PURGE, Keys.of(queue).all, [GROUP], f"purge of {queue!r}")
        return count

    async def ping(self) -> None:
        commands, _ = self._clients()
        with errors("ping"):
            await commands.ping()


class _Reader:
    """Reads one queue for consume(): reclaims expired leases, then ready entries, then blocks."""

    def __init__(self, backend: RedisStreamsBackend, keys: Keys, count: int) -> None:
        self.backend = backend
        self.keys = keys
        self.count = count
        self.cursors = ["0-0"] * MAX_PRIORITY
        self.next_reclaim = 0.0
        self.next_stale_check = time.monotonic() + _STALE_CHECK_S
        self.groups_ready = False

    async def fill(self, read_ahead: PrefetchBuffer[Entry]) -> bool:
        """Put the next entries into `read_ahead`, in priority order; False once the backend is closed."""
        reconnect = Reconnect()
        while not self.backend._closed.is_set():
            try:
                if entries := await self._read():
                    for entry in entries:
                        await read_ahead.put(entry)
                    return True
            except GroupLost as exc:
                log.info("redis consumer group of %r is gone (%s); recreating it", self.keys.queue, exc)
                self.groups_ready = False
            except BackendUnavailable as exc:
                await self.backend._pause(reconnect, f"consume of {self.keys.queue!r}", exc)
        return False

    async def _read(self) -> list[Entry]:
        b, streams = self.backend, self.keys.streams
        if not self.groups_ready:
            await b._call(lua.ENSURE_GROUPS, streams, [GROUP], f"create group on {self.keys.queue!r}")
            self.groups_ready = True
        if time.monotonic() >= self.next_reclaim:
            self.next_reclaim = time.monotonic() + b.reclaim_interval_s
            if entries := await self._reclaim():
                return entries
        if rows := await b._call(lua.FETCH, streams, [GROUP, b.consumer, self.count], "read"):
            return [Entry.from_row(row) for row in rows]
        block_ms = max(1, int((self.next_reclaim - time.monotonic()) * 1000))
        new: dict[KeyT, StreamIdT] = dict.fromkeys(self.keys.streams, ">")
        reply = await b._blocking_read(
            lambda r: r.xreadgroup(GROUP, b.consumer, new, count=1, block=block_ms), block_ms / 1000,
            "blocking read")
        return Entry.from_read(reply, self.keys)

    async def _reclaim(self) -> list[Entry]:
        b = self.backend
        stale_ms = 0
        if time.monotonic() >= self.next_stale_check:
            self.next_stale_check = time.monotonic() + _STALE_CHECK_S
            stale_ms = _STALE_CONSUMER_MS
        args = [GROUP, b.consumer, _ms(b.options.lease_s), self.count, stale_ms, *self.cursors]
        rows, cursors, lost = await b._call(lua.RECLAIM, self.keys.streams, args, "reclaim")
        self.cursors = [c.decode() for c in cursors]
        if lost:
            log.warning("redis queue %r: %d unsettled message(s) were deleted from the stream by hand "
                        "(XDEL/XTRIM) and cannot be redelivered", self.keys.queue, len(lost))
        return [Entry.from_row(row) for row in rows]
