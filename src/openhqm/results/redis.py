"""Redis result store (`results.type: redis`), for API replicas that share one Redis.

Settings: `results.redis.url` (redis:// or rediss://), `results.redis.prefix` (namespace of every key).
Keys, all under `<prefix>:`:

    req:<id>          hash  d = msgpack record, s = status, v = version, sess = session id,
                            b = the envelope written at create (read by the console's detail only)
    submitted         zset  every id, scored by submitted_at (the console's list, redis_queries.py)
    unfinished        zset  ids of records not yet terminal, scored by submitted_at (reconciliation and
                            the oldest unfinished age; records written before it existed are not in it)
    counts            hash  status -> number of records
    session:<sid>     zset  ids of one session, scored by submitted_at
    done              zset  msgpack [id, status, session?] of terminal records, scored by completed_at
    dead / dead:order hash id -> msgpack dead letter / zset of ids by dead_lettered_at
    state:<kind>      hash  name -> opaque bytes (keyed state: schedules, queue pauses, heartbeats)

Every write is one Lua script, so a record, its counters and indexes change together. A transition
reads the record, applies the changes in Python, and writes back only if the version is unchanged
(compare-and-set, retried on conflict). A record that becomes terminal is published on channel
`<prefix>:done`; each store holds one subscription and wakes its waiters. After a reconnect it
re-checks every waited id, so a publish missed while disconnected still wakes the waiter.
Terminal records also get a Redis TTL of `results.ttl_s` as a safety net; `cleanup()` fixes the
counters and indexes of records that expired that way. Scripts build keys from the prefix, so
Redis Cluster is not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from openhqm.backends.base import Health
from openhqm.config import Settings
from openhqm.constants import TERMINAL
from openhqm.errors import AlreadyExists, BackendError, BackendUnavailable, ConfigError
from openhqm.logging import get_logger
from openhqm.policies import READINESS_RECONNECT_BACKOFF, Reconnect
from openhqm.redact import mask_url
from openhqm.redis_pool import pooled_client
from openhqm.results import redis_lua as lua
from openhqm.results import redis_queries as queries
from openhqm.results.base import SCHEDULE_STATE, DeadLetterRecord, RequestRecord, ResultStore
from openhqm.results.queries import FilteredCounts, Position, RequestFilter, RequestPage

log = get_logger("openhqm.results")

_encode = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(RequestRecord).decode
_decode_dead = msgspec.msgpack.Decoder(DeadLetterRecord).decode

CAS_ATTEMPTS = 100
CLEANUP_BATCH = 500
CLEANUP_MAX_BATCHES = 1000
SUBSCRIBE_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 1.5

def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    """The one place where redis-py errors become openhqm errors."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise BackendUnavailable(f"redis result store: {action}: {exc}") from exc
    except RedisError as exc:
        raise BackendError(f"redis result store: {action}: {exc}") from exc


def create(settings: Settings) -> RedisResultStore:
    section = settings.results.redis
    return RedisResultStore(section.url.get_secret_value(), prefix=section.prefix,
                            ttl_s=settings.results.longest_ttl_s)


class RedisResultStore(ResultStore):
    name = "redis"
    tells_oldest_unfinished = True

    def __init__(self, url: str, *, prefix: str = "openhqm", ttl_s: float = 86400.0) -> None:
        super().__init__()
        self._url = url
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._channel = f"{prefix}:done"
        self._counts_key, self._done_key = f"{prefix}:counts", f"{prefix}:done"
        self._unfinished_key = f"{prefix}:unfinished"
        self._dead_key, self._dead_order_key = f"{prefix}:dead", f"{prefix}:dead:order"
        self._legacy_schedules_key = f"{prefix}:schedules"  # moved into the state hash on connect
        self._state_channel = f"{prefix}:state"  # a keyed-state write publishes its kind here
        self.listener_name = f"openhqm-results-{uuid.uuid4().hex[:12]}"  # CLIENT LIST name of the subscriber
        self._client: aioredis.Redis | None = None
        self._listener_client: aioredis.Redis | None = None
        self._pubsub: Any = None  # redis.asyncio.client.PubSub, which redis-py leaves untyped
        self._listener: asyncio.Task[None] | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable("redis result store is not connected; call connect() first")
        return self._client

    def _req_key(self, correlation_id: str) -> str:
        return f"{self._prefix}:req:{correlation_id}"

    async def _run(self, action: str, source: str, keys: list[str], args: list[EncodableT]) -> Any:
        """Run a script by its SHA (EVALSHA), loading it on first use."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis.register_script(source)
        with _mapped(action):
            return await script(keys=keys, args=args)

    async def connect(self) -> None:
        if self._client is not None:
            return
        try:
            client = pooled_client(self._url)
            listener_client = aioredis.from_url(self._url, client_name=self.listener_name,
                                                socket_keepalive=True)
        except ValueError as exc:
            raise ConfigError(f"results.redis.url {mask_url(self._url)!r}: {exc}") from exc
        pubsub: Any = listener_client.pubsub()
        try:
            with _mapped("connect"):
                await client.ping()
                await pubsub.subscribe(self._channel, self._state_channel)
                # Wait for the confirmations: a wait() that starts after connect() cannot miss a publish.
                confirmed = [await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S) for _ in range(2)]
            if any(message is None or message["type"] != "subscribe" for message in confirmed):
                raise BackendUnavailable(f"redis result store: no confirmation of SUBSCRIBE {self._channel}")
        except BaseException:
            await pubsub.aclose()
            await listener_client.aclose()
            await client.aclose()
            raise
        self._client, self._listener_client, self._pubsub = client, listener_client, pubsub
        self._listener = asyncio.create_task(self._listen(), name="openhqm-redis-store-listen")
        try:
            await self._run("connect", lua.MOVE_LEGACY_SCHEDULES,
                            [self._legacy_schedules_key, self._state_key(SCHEDULE_STATE)], [])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._client is None:
            return
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pubsub.aclose()
        if self._listener_client is not None:
            await self._listener_client.aclose()
        await self._client.aclose()
        self._client = self._listener_client = self._pubsub = self._listener = None
        self._scripts.clear()

    async def _listen(self) -> None:
        """Wake waiters from the done channel; redis-py resubscribes on reconnect, then we re-check."""
        reconnect, recheck = Reconnect(READINESS_RECONNECT_BACKOFF), False
        while True:
            try:
                if recheck:
                    await self._wake_finished()
                    recheck = False
                message = await self._pubsub.get_message(timeout=None)
            except Exception as exc:  # redis-py already retried; back off, then reconnect
                log.warning("result store subscription lost; reconnecting", error=str(exc),
                            retry_in_s=round(reconnect.next_delay_s, 3))
                await reconnect.wait()
                continue
            if message is None:
                continue
            reconnect.reset()
            if message["type"] == "message" and _text(message["channel"]) == self._state_channel:
                self._state_written.set()
            elif message["type"] == "message":
                self._wake(message["data"].decode())
            elif message["type"] == "subscribe":
                recheck = True  # (re)subscribed: publishes sent while we were away are lost
                self._state_written.set()

    async def _wake_finished(self) -> None:
        ids = self.waited_ids
        if not ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hget(self._req_key(cid), "s")
            statuses = await pipe.execute()
        for cid, status in zip(ids, statuses, strict=True):
            if status is not None and status.decode() in TERMINAL:
                self._wake(cid)

    def _done_score(self, record: RequestRecord) -> str:
        return repr(record.completed_at if record.completed_at is not None else record.updated_at)

    async def create(self, record: RequestRecord, envelope: bytes | None = None) -> None:
        cid = record.correlation_id
        keys = [self._req_key(cid), self._counts_key, self._done_key, f"{self._prefix}:submitted",
                self._unfinished_key]
        args: list[EncodableT] = [_encode(record), record.status, cid, self._done_score(record),
                                   str(self._ttl_ms), self._channel, repr(record.submitted_at), envelope or b""]
        if record.session_id is not None:
            keys.append(f"{self._prefix}:session:{record.session_id}")
            args.append(record.session_id)
        if not await self._run("create", lua.CREATE, keys, args):
            raise AlreadyExists(f"request {cid} exists")

    async def delete(self, correlation_id: str) -> None:
        keys = [self._req_key(correlation_id), self._counts_key, self._done_key]
        await self._run("delete", lua.DELETE, keys, [correlation_id, self._prefix])

    async def get(self, correlation_id: str) -> RequestRecord | None:
        with _mapped("get"):
            data = await self._redis.hget(self._req_key(correlation_id), "d")
        return None if data is None else _decode_record(_bytes(data))

    async def get_envelope(self, correlation_id: str) -> bytes | None:
        with _mapped("get_envelope"):
            data = await self._redis.hget(self._req_key(correlation_id), "b")
        return None if data is None else _bytes(data)

    async def query(self, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
        with _mapped("query"):
            return await queries.page(self._redis, self._prefix, where, after, limit)

    async def count_matching(self, where: RequestFilter) -> FilteredCounts:
        if queries.unfiltered(where):
            return FilteredCounts(await self.counts())
        with _mapped("count_matching"):
            return await queries.counts(self._redis, self._prefix, where)

    async def _transition(self, correlation_id: str, changes: dict[str, Any],
                          allowed_from: Iterable[str] | None) -> RequestRecord | None:
        allowed = None if allowed_from is None else {str(s) for s in allowed_from}
        key = self._req_key(correlation_id)
        keys = [key, self._counts_key, self._done_key, self._unfinished_key]
        for _ in range(CAS_ATTEMPTS):
            with _mapped("transition"):
                data, version = await self._redis.hmget(key, ["d", "v"])
            if data is None or version is None:
                return None
            record = _decode_record(_bytes(data))
            if record.terminal if allowed is None else record.status not in allowed:
                return None
            updated = msgspec.structs.replace(record, **changes)
            outcome = await self._run("transition", lua.TRANSITION, keys, [
                version, _encode(updated), updated.status, correlation_id, self._done_score(updated),
                str(self._ttl_ms), self._channel, repr(updated.submitted_at)])
            if outcome == 1:
                return updated
            if outcome == -1:
                return None
            # 0: another writer changed the record since we read it; read it again.
        raise BackendError(f"redis result store: request {correlation_id} kept changing during "
                           f"{CAS_ATTEMPTS} transition attempts")

    async def oldest_unfinished(self) -> float | None:
        with _mapped("oldest_unfinished"):
            return await queries.oldest_unfinished(self._redis, self._prefix)

    async def unfinished_submitted_before(self, before: float, limit: int = 100) -> list[RequestRecord]:
        if limit <= 0:
            return []
        with _mapped("unfinished_submitted_before"):
            return await queries.unfinished_before(self._redis, self._prefix, before, limit)

    async def list_session(self, session_id: str, limit: int = 1000) -> list[RequestRecord]:
        if limit <= 0:
            return []
        with _mapped("list_session"):
            ids = await self._redis.zrange(f"{self._prefix}:session:{session_id}", 0, limit - 1)
            async with self._redis.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.hget(self._req_key(_text(cid)), "d")
                rows = await pipe.execute()
        return [_decode_record(row) for row in rows if row is not None]

    async def counts(self) -> dict[str, int]:
        with _mapped("counts"):
            raw = await self._redis.hgetall(self._counts_key)
        counts = {_text(status): int(count) for status, count in raw.items()}
        return {status: count for status, count in counts.items() if count > 0}

    async def cleanup(self, older_than: float, statuses: Collection[str] | None = None) -> int:
        if statuses is not None and not statuses:
            return 0
        keys = [self._counts_key, self._done_key]
        removed = skipped = 0
        for _ in range(CLEANUP_MAX_BATCHES):  # bounded; the rest waits for the next cleanup
            # Records of other statuses stay in the index: step over them with the offset.
            batch, passed, seen = await self._run("cleanup", lua.CLEANUP, keys, [
                repr(older_than), str(CLEANUP_BATCH), self._prefix, str(skipped), *(statuses or ())])
            removed += int(batch)
            skipped += int(passed)
            if int(seen) < CLEANUP_BATCH:
                break
        return removed

    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        with _mapped("add_dead_letter"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._dead_key, record.id, _encode(record))
                pipe.zadd(self._dead_order_key, {record.id: record.dead_lettered_at})
                await pipe.execute()

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRecord]:
        if limit <= 0:
            return []
        with _mapped("list_dead_letters"):
            ids = await self._redis.zrange(self._dead_order_key, 0, limit - 1)
            rows = await self._redis.hmget(self._dead_key, [_text(i) for i in ids]) if ids else []
        return [_decode_dead(_bytes(row)) for row in rows if row is not None]

    async def take_dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        data = await self._run("take_dead_letter", lua.TAKE_DEAD, [self._dead_key, self._dead_order_key],
                               [dead_letter_id])
        return None if data is None else _decode_dead(data)

    async def purge_dead_letters(self) -> int:
        keys = [self._dead_key, self._dead_order_key]
        return int(await self._run("purge_dead_letters", lua.PURGE_DEAD, keys, []))

    def _state_key(self, kind: str) -> str:
        return f"{self._prefix}:state:{kind}"

    async def _put_state(self, kind: str, name: str, data: bytes | None) -> None:
        with _mapped("put_state"):
            async with self._redis.pipeline(transaction=True) as pipe:
                if data is None:
                    pipe.hdel(self._state_key(kind), name)
                else:
                    pipe.hset(self._state_key(kind), name, data)
                pipe.publish(self._state_channel, kind)  # wakes the other processes' state_written
                await pipe.execute()

    async def states(self, kind: str) -> dict[str, bytes]:
        with _mapped("states"):
            stored = await self._redis.hgetall(self._state_key(kind))
        return {_text(name): _bytes(data) for name, data in stored.items()}

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self._redis.ping()
        except Exception as exc:
            return Health(False, f"redis store: {type(exc).__name__}: {exc}")
        if self._listener is None or self._listener.done():
            return Health(False, "redis store: the completion listener is not running")
        if not getattr(self._pubsub.connection, "is_connected", False):
            return Health(False, "redis store: the completion subscription is down; reconnecting")
        return Health(True)
