"""Embedded durable default: a SQLite file in WAL mode under `data_dir`, no services needed.

URL: `queue.type: sqlite`; the file is `<data_dir>/openhqm.db`. Options: `queue.sqlite.synchronous`
(`normal`: survives process crashes and kill -9; `full`: also survives power loss, slower),
`queue.sqlite.lease_s` (visibility timeout), `queue.sqlite.poll_interval_s`.
Supports: priority (native: ORDER BY), delay (native: available_at), ordering key (emulated: only
the oldest message of a key is deliverable), dead letters (native: rows move to `<queue>.dlq`),
lease extension, eager dispatch (a message written already leased, when nothing waits ahead of it;
`publish_op` lets the result store write its record in the same transaction). Consumers in the
publishing process are woken at once, consumers in other processes by the bell (sqlite_bell.py),
with `PRAGMA data_version` polling as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.constants import DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import AlreadySettled, BackendUnavailable
from openhqm.sqlite_db import SQLiteDB, shared_db

if TYPE_CHECKING:
    from openhqm.config import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    available_at REAL NOT NULL,
    leased_until REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    key TEXT,
    body BLOB NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_ready ON queue_messages (queue, priority DESC, seq);
CREATE INDEX IF NOT EXISTS queue_messages_key ON queue_messages (queue, key, seq) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS queue_messages_due ON queue_messages (queue, available_at);
"""

_FETCH = """
UPDATE queue_messages SET leased_until = :lease_until, deliveries = deliveries + 1
WHERE seq IN (
    SELECT seq FROM queue_messages AS m
    WHERE m.queue = :queue AND m.available_at <= :now
      AND (m.leased_until IS NULL OR m.leased_until <= :now)
      AND (m.key IS NULL OR m.seq = (
          SELECT MIN(k.seq) FROM queue_messages AS k WHERE k.queue = m.queue AND k.key = m.key))
    ORDER BY m.priority DESC, m.seq
    LIMIT :limit)
RETURNING seq, message_id, priority, deliveries, key, body
"""

# Messages that are due but held back by their ordering key are woken by the ack, not by time.
_NEXT_DUE = """
SELECT MIN(MAX(available_at, COALESCE(leased_until, 0))) FROM queue_messages
WHERE queue = ? AND MAX(available_at, COALESCE(leased_until, 0)) > ?
"""


_INSERT = "INSERT INTO queue_messages (queue, message_id, priority, available_at, key, body) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_LEASED = ("INSERT INTO queue_messages (queue, message_id, priority, available_at, key, body, leased_until,"
                  " deliveries) VALUES (?, ?, ?, ?, ?, ?, ?, 1)")
# What a leased publish must not overtake: a message _FETCH would deliver now (never leased, released,
# or its lease ran out; not held back by its key) of equal or higher priority. Searched on
# queue_messages_due; it reads the in-flight rows too (~10 us with 32 of them), cheaper than another
# index that every lease would have to update.
_WAITING_AHEAD = """
SELECT 1 FROM queue_messages AS m
WHERE m.queue = :queue AND m.priority >= :priority AND m.available_at <= :now
  AND (m.leased_until IS NULL OR m.leased_until <= :now)
  AND (m.key IS NULL OR m.seq = (
      SELECT MIN(k.seq) FROM queue_messages AS k WHERE k.queue = m.queue AND k.key = m.key))
LIMIT 1
"""
# Any message of the key, even one in flight: the key's order is only kept by delivering its oldest.
_KEY_PRESENT = "SELECT 1 FROM queue_messages WHERE queue = ? AND key = ? LIMIT 1"

PublishOp = Callable[[sqlite3.Connection], "SQLiteDelivery | None"]


class SQLiteOptions(BackendOptions):
    synchronous: Literal["normal", "full"] = "normal"
    lease_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(
        0.005, gt=0, description="fallback check for other processes' commits (they also ring a socket bell)")


class SQLiteDelivery(Delivery):
    def __init__(self, backend: SQLiteBackend, queue: str, row: tuple[Any, ...]) -> None:
        seq, message_id, _priority, deliveries, key, body = row
        super().__init__(queue, body, attempt=deliveries, message_id=message_id, key=key)
        self._backend = backend
        self._seq = seq

    def _mine(self) -> tuple[int, int]:
        # The delivery count fences settles: after the lease ran out and the message went to
        # another consumer, this (late) settle matches no row and changes nothing.
        return self._seq, self.attempt

    async def _ack(self) -> None:
        await self._backend._db.run(self._delete)

    def ack_op(self) -> Callable[[sqlite3.Connection], None]:
        """The ack as an operation of the shared connection, so the result store can write the request's
        final state in its transaction (listener/settle.py); `acked()` once that has committed. Until
        then the delivery is unsettled: a failed transaction leaves it as it was, for its caller to
        settle otherwise."""
        if self.settled is not None:
            raise AlreadySettled(f"delivery {self.message_id} was already settled by {self.settled}")
        return self._delete

    def acked(self) -> None:
        self._settle("ack")

    def _delete(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM queue_messages WHERE seq = ? AND deliveries = ?", self._mine())
        if self.key is not None:  # the key's next message is deliverable now (woken after the commit)
            self._backend._db.notify(self.queue)

    async def _nack(self, delay_s: float | None) -> None:
        available_at = time.time() + (delay_s or 0)
        await self._backend._db.run(lambda c: c.execute(
            "UPDATE queue_messages SET leased_until = NULL, available_at = ? WHERE seq = ? AND deliveries = ?",
            (available_at, *self._mine())))
        self._backend._db.notify(self.queue)

    async def _dead_letter(self, reason: str) -> None:
        dlq = dead_letter_queue(self.queue)
        await self._backend._db.run(lambda c: c.execute(
            "UPDATE queue_messages SET queue = ?, leased_until = NULL, available_at = ?, deliveries = 0,"
            " reason = ? WHERE seq = ? AND deliveries = ?", (dlq, time.time(), reason, *self._mine())))
        self._backend._db.notify(dlq)

    async def extend_lease(self, seconds: float) -> None:
        await self._backend._db.run(lambda c: c.execute(
            "UPDATE queue_messages SET leased_until = ? WHERE seq = ? AND deliveries = ?",
            (time.time() + seconds, *self._mine())))


class SQLiteBackend(Backend):
    name = "sqlite"
    options_model = SQLiteOptions
    options: SQLiteOptions
    capabilities = Capabilities(
        priority=Support.NATIVE, delay=Support.NATIVE, ordering_key=Support.EMULATED,
        dead_letter=Support.NATIVE, lease_extension=True, durable=True, shared_between_processes=True,
        eager_dispatch=True,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        options = self.options
        self.path = settings.data_dir / "openhqm.db"
        self.poll_interval_s = options.poll_interval_s
        self._db: SQLiteDB = shared_db(self.path, options.synchronous)
        self._connected = False
        self._closed = asyncio.Event()
        self._held: list[list[Any]] = []  # each open consume()'s fetched rows not yet handed out

    @property
    def lease_s(self) -> float | None:
        return self.options.lease_s

    @property
    def db(self) -> SQLiteDB:
        """The process's connection to the file, shared with a SQLite result store on the same file."""
        return self._db

    @property
    def display_url(self) -> str:
        return f"sqlite:///{self.path}"

    async def connect(self) -> None:
        if self._connected:
            return
        self._db.acquire(SCHEMA)
        self._connected = True
        self._closed.clear()

    async def close(self) -> None:
        if not self._connected:
            return
        self._closed.set()
        # Fetched ahead but never handed out: back to the queue now, not after their lease.
        held = [row for rows in self._held for row in rows]
        for rows in self._held:
            rows.clear()
        if held:
            with contextlib.suppress(Exception):
                await self._release(held)
        self._connected = False
        self._db.wake_all()
        self._db.release()

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        await self._db.run(self.publish_op(queue, body, priority=priority, delay_s=delay_s, key=key,
                                           message_id=message_id))

    async def publish_leased(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                             key: str | None = None, message_id: str | None = None) -> SQLiteDelivery | None:
        def op(conn: sqlite3.Connection) -> SQLiteDelivery | None:
            leased = not self.waits_ahead(conn, queue, priority, key)
            return self.publish_op(queue, body, priority=priority, key=key, message_id=message_id,
                                   leased=leased)(conn)

        return await self._db.run(op)

    def publish_op(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY, delay_s: float | None = None,
                   key: str | None = None, message_id: str | None = None, leased: bool = False) -> PublishOp:
        """The publish as an operation of the shared connection, so a caller can put other rows in its
        transaction. `leased`: written leased to this process and returned as its delivery (attempt 1);
        the caller asked `waits_ahead` first, in the same transaction, so no other writer slips in."""
        message_id = message_id or new_id()

        def op(conn: sqlite3.Connection) -> SQLiteDelivery | None:
            now = time.time()
            if leased:
                row = (queue, message_id, priority, now, key, body, now + self.options.lease_s)
                seq = conn.execute(_INSERT_LEASED, row).lastrowid  # cheaper than RETURNING (measured)
                return SQLiteDelivery(self, queue, (seq, message_id, priority, 1, key, body))
            conn.execute(_INSERT, (queue, message_id, priority, now + (delay_s or 0), key, body))
            # Consumers run after this batch has committed (they wake on a later loop turn); a failed
            # commit only costs them a look at an unchanged queue.
            self._db.notify(queue)
            return None

        return op

    @staticmethod
    def waits_ahead(conn: sqlite3.Connection, queue: str, priority: int, key: str | None) -> bool:
        """Whether a leased publish would overtake: a ready message of equal or higher priority, or any
        message of the same ordering key, is in `queue`."""
        now = time.time()
        if key is not None and conn.execute(_KEY_PRESENT, (queue, key)).fetchone():
            return True
        return conn.execute(_WAITING_AHEAD, {"queue": queue, "priority": priority, "now": now}).fetchone() is not None

    def _fetch(self, conn: sqlite3.Connection, queue: str, limit: int) -> tuple[list[Any], float | None]:
        now = time.time()
        rows = conn.execute(_FETCH, {"queue": queue, "now": now, "lease_until": now + self.options.lease_s,
                                     "limit": limit}).fetchall()
        if rows:
            rows.sort(key=lambda r: (-r[2], r[0]))
            return rows, None
        next_due: float | None = conn.execute(_NEXT_DUE, (queue, now)).fetchone()[0]
        return rows, next_due

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        event = self._db.event(queue)
        unyielded: list[Any] = []
        self._held.append(unyielded)
        try:
            version = self._db.others_version()
            while not self._closed.is_set():
                event.clear()
                rows, next_due = await self._db.run(lambda c: self._fetch(c, queue, prefetch))
                unyielded[:] = rows
                while unyielded:
                    yield SQLiteDelivery(self, queue, unyielded.pop(0))
                if not rows:
                    version = await self._wait(event, version, next_due)
        finally:
            self._held = [rows for rows in self._held if rows is not unyielded]
            if unyielded and self._connected:
                # Prefetched but never handed out (the consumer stopped): release them at once
                # instead of letting them wait out their lease.
                await self._release(unyielded)

    async def _release(self, rows: list[Any]) -> None:
        fences = [(row[0], row[3]) for row in rows]
        await self._db.run(lambda c: c.executemany(
            "UPDATE queue_messages SET leased_until = NULL WHERE seq = ? AND deliveries = ?", fences))

    async def _wait(self, event: asyncio.Event, version: int, next_due: float | None) -> int:
        """Sleep until this process publishes, another process commits, or a delay falls due."""
        while not self._closed.is_set():
            timeout = self.poll_interval_s
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
                    return version
            if next_due is not None and time.time() >= next_due:
                return version
            current = self._db.others_version()
            if current != version:
                return current
        return version

    async def depth(self, queue: str) -> int:
        now = time.time()
        count: int = await self._db.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM queue_messages WHERE queue = ? AND (leased_until IS NULL OR leased_until <= ?)",
            (queue, now)).fetchone()[0])
        return count

    async def ping(self) -> None:
        if not self._connected:
            raise BackendUnavailable("sqlite backend is not connected")
        await self._db.run(lambda c: c.execute("SELECT 1").fetchone())

    async def purge(self, queue: str) -> int:
        count: int = await self._db.run(
            lambda c: c.execute("DELETE FROM queue_messages WHERE queue = ?", (queue,)).rowcount)
        return count
