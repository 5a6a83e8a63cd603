"""The stage recorder (openhqm/stages.py): which submits it traces, and what its summary says."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator

import pytest

from openhqm import stages
from openhqm.errors import ConfigError


@pytest.fixture(autouse=True)
def tracing_off_afterwards() -> Iterator[None]:
    yield
    stages.enable(0)


def one_request(correlation_id: str, hops: tuple[str, ...] = ("written", "published", "stored", "woken")) -> None:
    """A submit as the HTTP layer and the hops see it, in a context of its own (as each request has)."""

    def run() -> None:
        stages.received()
        for stage in hops:
            stages.mark(correlation_id, stage)
        stages.responded()

    contextvars.copy_context().run(run)


async def test_one_in_n_submits_is_traced() -> None:
    stages.enable(3)
    for n in range(9):
        one_request(f"r{n}")
    assert stages.summary()["traces"] == 3


async def test_summary_gives_each_gap_between_consecutive_hops_in_stage_order() -> None:
    stages.enable(1)
    one_request("a")
    one_request("b", ("written", "published", "dequeued", "claimed", "forwarded", "answered", "stored", "woken"))
    summary = stages.summary()
    pairs = [(gap["from"], gap["to"]) for gap in summary["gaps"]]
    assert pairs == [("received", "written"), ("written", "published"), ("published", "dequeued"),
                     ("published", "stored"), ("dequeued", "claimed"), ("claimed", "forwarded"),
                     ("forwarded", "answered"), ("answered", "stored"), ("stored", "woken"), ("woken", "responded")]
    assert next(g for g in summary["gaps"] if g["from"] == "written")["count"] == 2
    assert summary["total"]["count"] == 2
    assert {"p50_ms", "p90_ms", "p99_ms"} <= summary["total"].keys()


async def test_hops_of_untraced_requests_and_other_processes_messages_are_ignored() -> None:
    stages.enable(2)
    one_request("first")  # not sampled (1 in 2: the second is)
    stages.mark("a message no submit of this process traced", "dequeued")
    one_request("second")
    summary = stages.summary()
    assert summary["traces"] == 1
    assert all(gap["count"] == 1 for gap in summary["gaps"])


async def test_reset_starts_a_new_sample() -> None:
    stages.enable(1)
    one_request("a")
    assert stages.summary(reset=True)["traces"] == 1
    assert stages.summary()["traces"] == 0


async def test_the_loop_probe_measures_event_loop_turns_while_tracing() -> None:
    stages.enable(1)
    one_request("a")
    while not stages.summary()["loop_turn"]["count"]:
        await asyncio.sleep(stages.LOOP_PROBE_INTERVAL_S)  # the probe runs on this loop's timer
    assert stages.summary()["loop_turn"]["p50_ms"] >= 0


def test_off_records_nothing_and_says_so() -> None:
    stages.enable(0)
    one_request("a")
    assert stages.summary() == {"enabled": False}


def test_the_environment_variable_names_one_in_n_or_is_refused() -> None:
    assert stages.every_from_environment({}) == 0
    assert stages.every_from_environment({"OPENHQM_STAGE_SAMPLE": "20"}) == 20
    with pytest.raises(ConfigError, match="OPENHQM_STAGE_SAMPLE='often'"):
        stages.every_from_environment({"OPENHQM_STAGE_SAMPLE": "often"})
