"""The Redis client of the result store and the flow ledger: its pool waits for a free connection.

redis-py's default pool raises "Too many connections" once its 100 connections are in use, which a
worker running 100 jobs (the proxy-mode default) plus its housekeeping reached: the store write of
each job over the count failed, and the request was handed back and counted a try. The queue backend
(backends/redis_streams.py) builds its own pools, for its blocking reads.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

POOL_SIZE = 100  # connections per client, as redis-py's default pool
WAIT_S = 10.0  # for a free connection; then the call fails (BackendUnavailable) like any other


def pooled_client(url: str, **options: Any) -> aioredis.Redis:
    """Raises ValueError for a URL that is not Redis's."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=WAIT_S, **options)
    return aioredis.Redis.from_pool(pool)
