"""Redis result store on the machine's shared Redis: each test gets its own key prefix.

The prefix carries its creation time; stale test prefixes (over an hour old, so never a running
test's) are swept here, because the suite has no per-target teardown. Nothing else is touched.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio as aioredis

from openhqm.config import Settings
from tests.leftovers import REDIS_RESULTS_PREFIX, remove_redis_keys, unique
from tests.services import require_service

NAME = "redis"
CROSS_PROCESS = True

TEST_PREFIX = REDIS_RESULTS_PREFIX
STALE_AFTER_S = 3600.0
SWEEP_BUDGET_S = 2.0


async def sweep_stale_prefixes(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        deadline = time.monotonic() + SWEEP_BUDGET_S
        async for key in client.scan_iter(match=f"{TEST_PREFIX}:*", count=1000):
            if time.monotonic() > deadline:
                break
            created = key.split(b":")[1]
            if created.isdigit() and int(created) < time.time() - STALE_AFTER_S:
                await client.delete(key)
    finally:
        await client.aclose()


async def make_settings(tmp_path: Path) -> Settings:
    url = require_service("redis")
    await sweep_stale_prefixes(url)
    prefix = f"{TEST_PREFIX}:{int(time.time())}:{unique()}"
    return Settings(results={"type": "redis", "redis": {"url": url, "prefix": prefix}}, data_dir=tmp_path)


async def remove(settings: Settings) -> None:
    """Every key of the test's prefix."""
    options = settings.results.redis
    await remove_redis_keys(options.url.get_secret_value(), f"{options.prefix}:*")
