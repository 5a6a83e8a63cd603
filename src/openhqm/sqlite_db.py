"""One SQLite connection per database file and process, on its own thread, with group commit.

Every operation is a function of the connection. The thread takes all operations waiting, runs them
in one transaction (each inside a savepoint, so one failure spoils no other), commits once and
hands back the results. Under load this turns hundreds of commits into one, and the event loop
never blocks on the disk. The queue backend and the result store share the connection when they
share a file, so a submit's store row and queue row often land in the same commit.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from openhqm.errors import BackendUnavailable, ConfigError

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

_STOP = object()
_BATCH_MAX = 512


class SQLiteDB:
    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._lock = threading.Lock()
        self._events: dict[str, asyncio.Event] = {}

    def event(self, topic: str) -> asyncio.Event:
        """An in-process signal for `topic` (a queue name), set when this process changes it."""
        if topic not in self._events:
            self._events[topic] = asyncio.Event()
        return self._events[topic]

    def notify(self, topic: str) -> None:
        if topic in self._events:
            self._events[topic].set()

    async def apply_schema(self, script: str) -> None:
        """Create tables on a connection of its own: executescript commits, so not in a batch."""

        def apply() -> None:
            conn = self._open()
            try:
                conn.executescript(script)
            finally:
                conn.close()

        await asyncio.to_thread(apply)

    def watch_connection(self) -> sqlite3.Connection:
        """A separate read connection for `data_version` checks from the event loop thread."""
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)

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
        return conn

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                conn = self._open()
                self._thread = threading.Thread(target=self._run, args=(conn,), name="openhqm-sqlite",
                                                daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            thread, self._thread = self._thread, None
        self._ops.put(_STOP)
        thread.join()
        _DATABASES.pop((str(self.path), self.synchronous), None)

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise BackendUnavailable(f"SQLite database {self.path} is closed")
        future: Future[T] = Future()
        self._ops.put((op, future))
        return await asyncio.wrap_future(future)

    def _run(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            batch = [self._ops.get()]
            while len(batch) < _BATCH_MAX:
                try:
                    batch.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stop = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._run_batch(conn, batch)
        conn.close()

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[tuple[Operation, Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                if not future.set_running_or_notify_cancel():
                    continue  # its caller gave up before it ran
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = BackendUnavailable(f"SQLite commit failed: {exc}")
            outcomes = [(future, False, error) for _, future in batch if future.running()]
        for future, ok, value in outcomes:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_DATABASES: dict[tuple[str, str], SQLiteDB] = {}


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
