"""The console's Ticker: one reading per period for every open console, none when nobody listens."""

from __future__ import annotations

import asyncio
from typing import Any

from openhqm.http.console_events import Ticker


class Counting:
    def __init__(self) -> None:
        self.reads = 0

    async def read(self) -> dict[str, Any]:
        self.reads += 1
        return {"n": self.reads}


async def test_two_consoles_share_each_reading() -> None:
    source = Counting()
    ticker = Ticker(source.read, interval_s=0.01)
    with ticker.listen() as first, ticker.listen() as second:
        seen = [(await first.get())["n"], (await second.get())["n"]]
        await first.get()
        await second.get()
    assert seen == [1, 1]
    assert source.reads <= 3  # one per period, not one per console


async def test_reading_stops_when_the_last_console_leaves() -> None:
    source = Counting()
    ticker = Ticker(source.read, interval_s=0.01)
    with ticker.listen() as inbox:
        await inbox.get()
    stopped_at = source.reads
    for _ in range(5):
        await asyncio.sleep(0)  # let a task that was not stopped run (it would read again)
    assert source.reads == stopped_at


async def test_a_failed_reading_leaves_the_stream_open() -> None:
    calls = 0

    async def flaky() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("store busy")
        return {"n": calls}

    ticker = Ticker(flaky, interval_s=0.01)
    with ticker.listen() as inbox:
        assert (await asyncio.wait_for(inbox.get(), 5))["n"] == 2
