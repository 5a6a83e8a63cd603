"""`serve --processes N` (`server.processes`): N serving processes on one port, supervised.

    supervisor (this process: no HTTP, no event loop)
      reserves the port (http/shared_port.py) and a fresh metrics directory (metrics.py), then runs
      N x `python -m openhqm.serve_process`, each a whole `openhqm serve` on the shared queue and store

The processes share what matters through the queue and the result store, as listener replicas and
worker processes already do: a Prefer: wait whose request another process's worker ran is woken by
the store (the SQLite bell, Redis pub/sub, Postgres NOTIFY). The supervisor:

- waits until every process listens; should one exit first, it stops the others and exits with that
  process's code (1 if it had none);
- forwards SIGTERM or SIGINT as SIGTERM (a second signal as itself: a second Ctrl-C forces uvicorn
  out), waits for every process's drain, and exits 0 when all drained cleanly, else 1;
- starts again a process that exits on its own, after a pause that doubles while it keeps failing
  (0.5 s up to 30 s; back to 0.5 s once one stayed up STABLE_S), and logs each; a slot whose process
  fails to start MAX_START_FAILURES times in a row makes it give up: all stop, exit 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from openhqm.config import Settings
from openhqm.http.shared_port import base_url, bound_port, bound_socket
from openhqm.logging import get_logger
from openhqm.serve_process import Order

log = get_logger("openhqm.supervisor")

FIRST_RESTART_S = 0.5
MAX_RESTART_S = 30.0
STABLE_S = 60.0  # a process up this long had no trouble starting: its next restart is quick again
MAX_START_FAILURES = 5
STOP_MARGIN_S = 30.0  # beyond the longest drain a process may take, before it is killed
CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)  # uvicorn re-raises the signal it drained for

Spawn = Callable[[int], tuple[subprocess.Popen[bytes], int]]


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    pipe: int  # the ready pipe's read end: a byte once it listens, EOF once it exited
    started_at: float
    ready_at: float | None = None


class Supervisor:
    """`spawn(index)` starts slot `index`'s process and returns it with its ready pipe's read end."""

    def __init__(self, count: int, spawn: Spawn, stop_timeout_s: float,
                 on_exit: Callable[[int], None] = lambda pid: None) -> None:
        self.count = count
        self.spawn = spawn
        self.stop_timeout_s = stop_timeout_s
        self.on_exit = on_exit
        self.children: dict[int, Child] = {}
        self.restart_at: dict[int, float] = {}
        self.short_lives = [0] * count  # consecutive exits before STABLE_S, per slot
        self.start_failures = [0] * count  # consecutive exits before listening, per slot
        self.serving = False  # every slot listened once: from now on an exit is restarted
        self.code: int | None = None  # set when stopping: the exit code so far
        self._signals: list[int] = []
        self._selector = selectors.DefaultSelector()

    def run(self, announce: Callable[[], None] = lambda: None) -> int:
        with self._handling_signals():
            for index in range(self.count):
                self._start(index)
            while self.code is None:
                self._step(self._next_timeout())
                if not self.serving and len(self.children) == self.count and all(
                        child.ready_at is not None for child in self.children.values()):
                    self.serving = True
                    announce()
            return self._stop_all()

    # the loop
    def _step(self, timeout_s: float) -> None:
        for key, _ in self._selector.select(timeout_s):
            if isinstance(key.data, Child):
                self._read_pipe(key.data)
            else:
                with contextlib.suppress(OSError):
                    while key.fileobj.recv(64):  # type: ignore[union-attr]  # the wake-up socket
                        pass
        for child in list(self.children.values()):  # an exit whose EOF is late (a grandchild's copy)
            if child.proc.poll() is not None:
                self._reap(child)
        signals, self._signals = self._signals, []
        for signum in signals:
            self._on_signal(signum)
        now = time.monotonic()
        for index, due in list(self.restart_at.items()):
            if due <= now and self.code is None:
                del self.restart_at[index]
                self._start(index)

    def _next_timeout(self) -> float:
        due = min(self.restart_at.values(), default=time.monotonic() + 1.0)
        return max(0.0, min(1.0, due - time.monotonic()))

    def _start(self, index: int) -> None:
        proc, pipe = self.spawn(index)
        child = Child(index, proc, pipe, time.monotonic())
        self.children[index] = child
        self._selector.register(pipe, selectors.EVENT_READ, child)
        log.info("serving process started", process=index + 1, of=self.count, pid=proc.pid)

    def _read_pipe(self, child: Child) -> None:
        try:
            data = os.read(child.pipe, 64)
        except OSError:
            data = b""
        if not data:
            self._reap(child)
        elif child.ready_at is None:
            child.ready_at = time.monotonic()
            self.start_failures[child.index] = 0
            if self.serving:
                log.info("serving process restarted", process=child.index + 1, pid=child.proc.pid)

    def _reap(self, child: Child) -> None:
        if self.children.get(child.index) is not child:
            return
        del self.children[child.index]
        self._selector.unregister(child.pipe)
        os.close(child.pipe)
        code = child.proc.wait()
        self.on_exit(child.proc.pid)
        if self.code is not None:
            if code not in CLEAN_EXITS:
                log.error("serving process ended badly while stopping", process=child.index + 1,
                          pid=child.proc.pid, exit_code=code)
                self.code = 1
        elif not self.serving:
            log.error("serving process could not start; stopping the others", process=child.index + 1,
                      pid=child.proc.pid, exit_code=code)
            self._begin_stop(code if code > 0 else 1)
        else:
            self._schedule_restart(child, code)

    def _schedule_restart(self, child: Child, code: int) -> None:
        index, now = child.index, time.monotonic()
        if child.ready_at is None:
            self.start_failures[index] += 1
            if self.start_failures[index] >= MAX_START_FAILURES:
                log.error("serving process failed to start again and again; giving up", process=index + 1,
                          attempts=MAX_START_FAILURES, exit_code=code)
                self._begin_stop(1)
                return
        stable = child.ready_at is not None and now - child.ready_at >= STABLE_S
        self.short_lives[index] = 0 if stable else self.short_lives[index] + 1
        delay = min(MAX_RESTART_S, FIRST_RESTART_S * 2 ** max(0, self.short_lives[index] - 1))
        self.restart_at[index] = now + delay
        log.warning("serving process exited; starting it again", process=index + 1, pid=child.proc.pid,
                    exit_code=code, restart_in_s=delay)

    # stopping
    def _on_signal(self, signum: int) -> None:
        if self.code is None:
            log.info("stopping: every serving process drains", signal=signal.Signals(signum).name)
            self._begin_stop(0)
        else:  # again: pass it on as it is (a second SIGINT makes uvicorn quit without waiting)
            self._send(signum)

    def _begin_stop(self, code: int) -> None:
        self.code = code
        self.restart_at.clear()
        self._send(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)

    def _stop_all(self) -> int:
        deadline = time.monotonic() + self.stop_timeout_s
        while self.children and time.monotonic() < deadline:
            self._step(min(1.0, max(0.0, deadline - time.monotonic())))
        for child in list(self.children.values()):
            log.error("serving process did not stop in time; killed", process=child.index + 1, pid=child.proc.pid,
                      waited_s=self.stop_timeout_s)
            child.proc.kill()
            self._reap(child)
            self.code = 1
        self._selector.close()
        return self.code or 0

    @contextlib.contextmanager
    def _handling_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT are noted and wake the selector (signal.set_wakeup_fd)."""
        wake_read, wake_write = socket.socketpair()
        for end in (wake_read, wake_write):
            end.setblocking(False)
        self._selector.register(wake_read, selectors.EVENT_READ, None)

        def note(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)

        previous_fd = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, note) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            wake_read.close()
            wake_write.close()


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """Where the serving processes keep their metric values: PROMETHEUS_MULTIPROC_DIR when set (emptied
    first: a previous run's values would be added to this run's), else a fresh one removed at the end."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="openhqm-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def serve_processes(settings: Settings, run_workers: bool) -> int:
    """Run `server.processes` serving processes until a signal stops them; the exit code."""
    from prometheus_client.multiprocess import mark_process_dead

    server = settings.server
    reserved = bound_socket(server.host, server.port, shared=True)
    with contextlib.closing(reserved), metrics_directory() as metrics:
        port = bound_port(reserved)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}

        def spawn(index: int) -> tuple[subprocess.Popen[bytes], int]:
            read_end, write_end = os.pipe()
            try:
                proc = subprocess.Popen([sys.executable, "-m", "openhqm.serve_process"], stdin=subprocess.PIPE,
                                        pass_fds=(write_end,), env=env)
            except BaseException:
                os.close(read_end)
                raise
            finally:
                os.close(write_end)
            order = Order(settings, run_workers, port, index, server.processes, os.getpid(), write_end)
            assert proc.stdin is not None
            try:
                proc.stdin.write(pickle.dumps(order))
            except BrokenPipeError:
                pass  # it died at once: its ready pipe's EOF says so
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            return proc, read_end

        def announce() -> None:
            url = base_url(server.host, port)
            if server.engine == "granian":
                log.info("serving", url=url, engine="granian", processes=server.processes)
                return
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on %s (%d processes; Press CTRL+C to quit)", url, server.processes)

        stop_timeout_s = 2 * settings.worker.shutdown_timeout_s + 5 + STOP_MARGIN_S
        supervisor = Supervisor(server.processes, spawn, stop_timeout_s,
                                on_exit=lambda pid: mark_process_dead(pid, str(metrics)))  # type: ignore[no-untyped-call]
        return supervisor.run(announce)
