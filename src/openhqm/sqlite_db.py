"""One SQLite connection per database file and process, with group commit on the event loop.

Every operation is a function of the connection that either completes or raises before it has
written anything (most write with one statement, and SQLite statements are atomic; one that writes
more, like the submit's record and message in listener/enqueue.py, raises nothing but SQLite's own
errors once it has written, and those fail the whole batch), so one failing operation spoils no other.
Operations issued during one turn of the event loop are run together in one transaction and committed
once. Under load this turns hundreds of commits into one. The work runs on the loop thread itself: in
WAL mode with synchronous=NORMAL a commit does not fsync and takes tens of microseconds, far less than
handing each operation to a thread and back (measured: a writer thread made a round trip 30x slower,
because every hop waits for the GIL). The queue backend and the result store share the connection
when they share a file, so their rows land in the same commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from openhqm.errors import BackendUnavailable, ConfigError, StoreFull
from openhqm.sqlite_bell import Bell

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

_BATCH_MAX = 1024


class SQLiteDB:
    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._users = 0
        self._events: dict[str, asyncio.Event] = {}
        self.finished_requests = 0  # terminal moves by any store object of this process (see results/sqlite.py)
        self.bell = Bell(path)
        self.bell.on_ring(self.wake_all)

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data_dir {self.path.parent} cannot be created: {exc.strerror}") from exc
        if not os.access(self.path.parent, os.W_OK):
            raise ConfigError(f"data_dir {self.path.parent} is not writable")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=30000")
        # Checkpoints (copying the WAL back into the database, with an fsync) are the slow part of
        # a busy queue; doing them every 16 MiB of WAL instead of every 4 MiB measured faster.
        conn.execute("PRAGMA wal_autocheckpoint=4096")
        return conn

    def acquire(self, schema: str) -> None:
        """Create `schema`'s tables where missing, then share the connection until `release()`."""
        self.apply_schema(schema)
        self._users += 1
        if self._conn is None:
            self._conn = self._open()
            self.bell.open()

    def release(self) -> None:
        self._users -= 1
        if self._users > 0 or self._conn is None:
            return
        if self._pending:
            self._flush()
        self.bell.close()
        self._conn.close()
        self._conn = None
        _DATABASES.pop((str(self.path), self.synchronous), None)

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise BackendUnavailable(f"SQLite database {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self._conn
        if conn is None:
            return
        changes = conn.total_changes
        while self._pending:
            batch, self._pending = self._pending[:_BATCH_MAX], self._pending[_BATCH_MAX:]
            self._run_batch(conn, batch)
        if conn.total_changes != changes:
            self.bell.ring()

    def wake_all(self) -> None:
        """Every consumer and watcher of this process looks again (another process committed, or
        this one is closing)."""
        for event in self._events.values():
            event.set()

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                if future.cancelled():
                    continue  # its caller gave up before it ran
                try:
                    outcomes.append((future, True, op(conn)))
                except sqlite3.Error:
                    raise  # the connection itself is in trouble: fail the whole batch
                except Exception as exc:
                    outcomes.append((future, False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                # SQLite may have rolled back itself (a full disk does); a failing ROLLBACK must not
                # leave the batch's callers waiting forever.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = unavailable(exc, "commit")
            error.__cause__ = exc
            outcomes = [(future, False, error) for _, future in batch]
        for future, ok, value in outcomes:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def event(self, topic: str) -> asyncio.Event:
        """An in-process signal for `topic` (a queue name), set when this process changes it."""
        if topic not in self._events:
            self._events[topic] = asyncio.Event()
        return self._events[topic]

    def notify(self, topic: str) -> None:
        if topic in self._events:
            self._events[topic].set()

    def apply_schema(self, script: str) -> None:
        """Create tables on a connection of its own: executescript commits, so not in a batch."""

        conn = self._open()
        try:
            conn.executescript(script)
        finally:
            conn.close()

    def migrate(self, op: Callable[[sqlite3.Connection], None]) -> None:
        """Run `op` in one write transaction on a connection of its own (processes starting together
        take turns, so `op` sees what an earlier one left)."""
        conn = self._open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            op(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """A read that may scan many rows (counts, depth, listings), on a thread with a connection of
        its own: WAL readers do not block the writer, and the event loop keeps serving meanwhile."""
        if self._conn is None:
            raise BackendUnavailable(f"SQLite database {self.path} is closed")
        return await asyncio.to_thread(self._read, op)

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return op(conn)
        except sqlite3.Error as exc:
            raise unavailable(exc, "read") from exc
        finally:
            conn.close()

    def others_version(self) -> int:
        """`PRAGMA data_version` of the writer connection: it changes only when ANOTHER connection
        (another process) commits, so this process's own writes never look like news. Cheap enough
        to poll every few milliseconds from the event loop."""
        return data_version(self.connection)

    @property
    def connection(self) -> sqlite3.Connection:
        """For reads on the loop thread between batches (never inside an operation)."""
        if self._conn is None:
            raise BackendUnavailable(f"SQLite database {self.path} is closed")
        return self._conn


_DATABASES: dict[tuple[str, str], SQLiteDB] = {}


def unavailable(exc: sqlite3.Error, what: str) -> BackendUnavailable:
    """The one mapping of SQLite's errors: a full disk (SQLITE_FULL, "database or disk is full") is
    StoreFull, so a submit says the store cannot write rather than that it is down; anything else
    is BackendUnavailable. Both leave nothing written: the batch was rolled back."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:  # the primary code, extended or not
        return StoreFull(f"SQLite {what} failed, the disk is full: {exc}")
    return BackendUnavailable(f"SQLite {what} failed: {exc}")


def shared_db(path: Path, synchronous: str = "normal") -> SQLiteDB:
    """The process-wide SQLiteDB for `path`, so the queue and the store share one writer."""
    key = (str(path.resolve()), synchronous)
    if key not in _DATABASES:
        _DATABASES[key] = SQLiteDB(path.resolve(), synchronous=synchronous)
    return _DATABASES[key]


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits: the cheap cross-process wake-up signal."""
    value: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return value
