"""The Batcher alone: when a batch goes, and what each waiter gets back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openhqm.errors import TargetFailed
from openhqm.worker.batching import Batcher


async def test_a_full_batch_goes_at_once_and_a_partial_one_after_the_wait() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[Any]:
        calls.append(items)
        return [item * 2 for item in items]

    batcher: Batcher[int] = Batcher("double", run, size=3, wait_s=0.05)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(5)))
    assert results == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2], [3, 4]]


async def test_a_waiter_that_gives_up_leaves_the_others_batch_alone() -> None:
    release = asyncio.Event()

    async def run(items: list[str]) -> list[Any]:
        await release.wait()
        return items

    batcher: Batcher[str] = Batcher("slow", run, size=2, wait_s=10)
    impatient = asyncio.create_task(batcher.submit("a"))
    patient = asyncio.create_task(batcher.submit("b"))
    await asyncio.sleep(0)  # both joined; the batch is full and running
    impatient.cancel()
    release.set()
    assert await patient == "b"
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_an_exception_in_the_results_fails_that_item_and_a_raise_fails_all() -> None:
    async def run(items: list[int]) -> list[Any]:
        if 99 in items:
            raise RuntimeError("whole batch")
        return [ValueError("bad") if item == 1 else item for item in items]

    batcher: Batcher[int] = Batcher("mixed", run, size=2, wait_s=1)
    outcomes = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
    assert outcomes[0] == 0 and isinstance(outcomes[1], ValueError)
    outcomes = await asyncio.gather(batcher.submit(99), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_a_wrong_length_answer_names_both_lengths() -> None:
    async def run(items: list[int]) -> list[Any]:
        return items[:1]

    batcher: Batcher[int] = Batcher("short", run, size=2, wait_s=1)
    outcomes = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
    assert all(isinstance(o, TargetFailed) and "1 results for a batch of 2" in str(o) for o in outcomes)
