"""A push signal between the processes that share one SQLite file: "I committed, look again".

SQLite cannot notify other connections, so without this a consumer in another process notices new
messages only at its next `PRAGMA data_version` poll, and a waiter only at its store's next watch.
Each process binds a Linux abstract-namespace datagram socket and registers it as an empty file in
`<database>.bell/` (abstract names have no 108-byte path limit and vanish with the process). After
every commit that changed rows, the writer sends one byte to every registered peer; a peer drains its
socket and wakes its consumers and waiters once per loop turn. Polling stays as the fallback:
a lost datagram, a full socket buffer or a platform without abstract sockets only costs latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from openhqm.logging import get_logger

log = get_logger("openhqm.sqlite")

_PREFIX = b"\0openhqm-bell-"
_PEER_REFRESH_S = 0.5


class Bell:
    def __init__(self, database: Path) -> None:
        self.directory = database.with_name(database.name + ".bell")
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: list[tuple[str, bytes]] = []
        self._peers_read_at = 0.0
        self._listeners: list[Callable[[], None]] = []

    @property
    def available(self) -> bool:
        return sys.platform.startswith("linux")

    def open(self) -> None:
        """Bind and register; without a running loop or on other platforms, do nothing (polling only)."""
        if self._sock is not None or not self.available:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        try:
            self.directory.mkdir(exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(_PREFIX + self._name.encode())
            (self.directory / self._name).touch()
        except OSError as exc:
            log.warning("no cross-process wake-ups; other processes are noticed by polling", error=str(exc))
            return
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_datagram)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            (self.directory / self._name).unlink()

    def on_ring(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever another process rings."""
        self._listeners.append(listener)

    def ring(self) -> None:
        """Tell every other process sharing the file that something was committed."""
        sock = self._sock
        if sock is None:
            return
        for name, address in self._current_peers():
            try:
                sock.sendto(b"!", address)
            except BlockingIOError:
                pass  # its buffer is full: it has plenty of unread rings already
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    self._forget(name)  # the process is gone; its file is garbage

    def _current_peers(self) -> list[tuple[str, bytes]]:
        now = time.monotonic()
        if now - self._peers_read_at >= _PEER_REFRESH_S:
            self._peers_read_at = now
            try:
                names = [entry.name for entry in os.scandir(self.directory) if entry.name != self._name]
            except OSError:
                names = []
            self._peers = [(name, _PREFIX + name.encode()) for name in names]
        return self._peers

    def _forget(self, name: str) -> None:
        self._peers = [peer for peer in self._peers if peer[0] != name]
        with contextlib.suppress(OSError):
            (self.directory / name).unlink()

    def _on_datagram(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            while sock.recv(64):
                pass
        for listener in self._listeners:
            listener()
