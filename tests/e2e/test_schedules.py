"""A schedule on two `openhqm serve` processes: one request per tick, on each result store that
processes share (SQLite in one data dir, Redis, PostgreSQL)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openhqm.timefmt import parse_rfc3339
from tests.contract.store_targets import postgres, redis
from tests.e2e.conftest import SAMPLE_ENV
from tests.processes import SUBPROCESS_PYTHONPATH, OpenHQMProcess


def fired_ticks(*servers: OpenHQMProcess) -> collections.Counter[float]:
    """Every tick the servers submitted, from their JSON logs ("schedule fired" lines)."""
    ticks: collections.Counter[float] = collections.Counter()
    for server in servers:
        for line in server.log().splitlines():
            if '"schedule fired"' in line:
                ticks[parse_rfc3339(json.loads(line)["scheduled_for"])] += 1
    return ticks


@pytest.fixture
async def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The result store's settings as environment variables (a fresh prefix or table per test, removed after)."""
    store: str = request.param
    if store == "redis":
        settings = await redis.make_settings(tmp_path)
        section = settings.results.redis
        yield {"OPENHQM_RESULTS__TYPE": "redis", "OPENHQM_RESULTS__REDIS__URL": section.url.get_secret_value(),
               "OPENHQM_RESULTS__REDIS__PREFIX": section.prefix}
        await redis.remove(settings)
    elif store == "postgres":
        settings = await postgres.make_settings(tmp_path)
        pg = settings.results.postgres
        yield {"OPENHQM_RESULTS__TYPE": "postgres", "OPENHQM_RESULTS__POSTGRES__DSN": pg.dsn.get_secret_value(),
               "OPENHQM_RESULTS__POSTGRES__TABLE": pg.table}
        await postgres.remove(settings)
    else:
        yield {}


@pytest.mark.parametrize("store_env", ["sqlite", "redis", "postgres"], indirect=True)
async def test_every_second_schedule_on_two_serve_processes_fires_each_tick_exactly_once(
        tmp_path: Path, store_env: dict[str, str]) -> None:
    env = {**SAMPLE_ENV, **store_env, "OPENHQM_TEST_RUN_LOG": str(tmp_path / "runs.log"),
           "OPENHQM_SCHEDULES__TICK__EVERY_S": "1",
           "OPENHQM_SCHEDULES__TICK__METADATA": '{"handler": "record"}',
           # the parent's path too: it may hold the schedules' cron library
           "PYTHONPATH": os.pathsep.join([SUBPROCESS_PYTHONPATH, os.environ.get("PYTHONPATH", "")])}
    first = OpenHQMProcess("serve", tmp_path, env, log_name="first").start()
    second = OpenHQMProcess("serve", tmp_path, env, log_name="second")
    try:
        second.start()
        both_running = time.time()
        deadline = time.monotonic() + 40
        while max(fired_ticks(first, second), default=0) < both_running + 10:
            assert time.monotonic() < deadline, "the schedule stopped firing"
            await asyncio.sleep(0.2)  # following two other processes' logs: nothing to await
    finally:
        second.stop()
        first.stop()
    ticks = fired_ticks(first, second)
    assert [tick for tick, count in ticks.items() if count > 1] == [], "no tick fired twice"
    ordered = sorted(ticks)
    assert ordered == [ordered[0] + i for i in range(len(ordered))], "no tick missed"
    runs = collections.Counter((tmp_path / "runs.log").read_text().split())
    assert set(runs.values()) == {1}, "each tick's request ran once"
    assert len(runs) >= len(ordered) - 2  # the last ticks may still be queued at the stop
