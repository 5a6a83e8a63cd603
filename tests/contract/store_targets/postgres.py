"""PostgreSQL result store on the machine's shared `test` database: each test gets its own tables.

Table names carry their creation time; stale test tables (over an hour old, so never a running
test's) are dropped here, because the suite has no per-target teardown. Nothing else is touched.
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg

from openhqm.config import Settings
from tests.leftovers import POSTGRES_TABLE_PREFIX, remove_postgres_tables, unique
from tests.services import require_service

NAME = "postgres"
CROSS_PROCESS = True

TEST_TABLE_PREFIX = POSTGRES_TABLE_PREFIX
STALE_AFTER_S = 3600.0


async def drop_stale_tables(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        names = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                                 " AND starts_with(tablename, $1)", TEST_TABLE_PREFIX)
        for (name,) in names:
            created = name.removeprefix(TEST_TABLE_PREFIX).split("_")[0]
            if created.isdigit() and int(created) < time.time() - STALE_AFTER_S:
                await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    finally:
        await conn.close()


def unique_table() -> str:
    return f"{TEST_TABLE_PREFIX}{int(time.time())}_{unique()}"


async def make_settings(tmp_path: Path) -> Settings:
    dsn = require_service("postgres")
    await drop_stale_tables(dsn)
    return Settings(results={"type": "postgres", "postgres": {"dsn": dsn, "table": unique_table()}},
                    data_dir=tmp_path)


async def remove(settings: Settings) -> None:
    """The test's tables."""
    options = settings.results.postgres
    await remove_postgres_tables(options.dsn.get_secret_value(), options.table)
