"""SIGTERM and SIGINT in the processes that drain themselves (`openhqm worker`, `serve` on granian):
the first asks for a drain, a second exits at once (unsettled messages return after their lease)."""

from __future__ import annotations

import asyncio
import os
import signal

from openhqm.logging import get_logger

log = get_logger("openhqm.signals")


def drain_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT, handled in the running loop from now on."""
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now; unsettled messages return after their lease")
            os._exit(1)
        log.info("signal received: draining", signal=signal.Signals(signum).name)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
