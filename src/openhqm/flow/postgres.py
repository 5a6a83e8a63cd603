"""Flow limits in the PostgreSQL database of the result store (tables `<table>_flow_buckets`,
`<table>_flow_holders`, `<table>_flow_waiting` beside `results.postgres.table`).

A decision is one transaction that locks the request's bucket rows (`SELECT ... FOR UPDATE`, in id
order, so two requests sharing buckets never deadlock) and then reads and writes their holders:
deciding on one bucket is serial across every process. Times are the server's clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import asyncpg

from openhqm.errors import BackendUnavailable, ConfigError
from openhqm.flow.ledger import (
    PRUNE_EVERY,
    SNAPSHOT_ROWS,
    TOP_KEYS,
    WAITING_GRACE_S,
    BucketState,
    LimitState,
    Verdict,
    bucket_of,
    decide,
    limits_of,
    top_keys,
)
from openhqm.flow.limits import Bucket, key_range
from openhqm.redact import mask_url

POOL_MAX_SIZE = 4


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BackendUnavailable(f"postgres flow limits: {action}: {exc}") from exc


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class PostgresLedger:
    def __init__(self, dsn: str, *, table: str = "openhqm_requests") -> None:
        self._dsn = dsn
        self.buckets_table, self.holders_table, self.waiting_table = (
            _quote(f"{table}_flow_{kind}") for kind in ("buckets", "holders", "waiting"))
        self._pool: asyncpg.Pool | None = None
        self._decisions = 0

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BackendUnavailable("postgres flow limits are not connected")
        return self._pool

    async def connect(self) -> None:
        if self._pool is not None:
            return
        with _mapped("connect"):
            try:
                pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=POOL_MAX_SIZE)
            except asyncpg.ClientConfigurationError as exc:
                raise ConfigError(f"results.postgres.dsn {mask_url(self._dsn)!r}: {exc}") from exc
            try:
                async with pool.acquire() as conn:
                    await conn.execute(
                        # Bucket ids in byte order ("C"), so a keyed limit's buckets are one index range
                        # whatever the database's collation (see snapshot).
                        f'CREATE TABLE IF NOT EXISTS {self.buckets_table} (id text COLLATE "C" PRIMARY KEY,'
                        " tat float8);"
                        f'CREATE TABLE IF NOT EXISTS {self.holders_table} (bucket text COLLATE "C" NOT NULL,'
                        " holder text NOT NULL, expires_at float8 NOT NULL, PRIMARY KEY (bucket, holder));"
                        f"CREATE TABLE IF NOT EXISTS {self.waiting_table} (limit_name text NOT NULL,"
                        ' holder text NOT NULL, expires_at float8 NOT NULL, bucket text COLLATE "C",'
                        " PRIMARY KEY (limit_name, holder));"
                        # a table of an earlier version lacks it (its rows count, with no key)
                        f'ALTER TABLE {self.waiting_table} ADD COLUMN IF NOT EXISTS bucket text COLLATE "C";')
            except BaseException:
                await pool.close()
                raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def acquire(self, buckets: Sequence[Bucket], holder: str, *, ticket: bool, concurrency_delay_s: float,
                      ttl_s: float) -> Verdict:
        ids = sorted({b.id for b in buckets})
        limits = limits_of(buckets)
        self._decisions += 1
        if self._decisions % PRUNE_EVERY == 0:
            with _mapped("prune"):
                await self._db.execute(f"DELETE FROM {self.buckets_table} WHERE tat IS NULL"
                                       " OR tat <= extract(epoch FROM clock_timestamp())")
        with _mapped("acquire"):
            async with self._db.acquire() as conn, conn.transaction():
                now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
                await conn.execute(f"INSERT INTO {self.buckets_table} (id) SELECT unnest($1::text[])"
                                   " ON CONFLICT DO NOTHING", ids)
                tats = {r["id"]: r["tat"] for r in await conn.fetch(
                    f"SELECT id, tat FROM {self.buckets_table} WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids)}
                await conn.execute(f"DELETE FROM {self.holders_table} WHERE bucket = ANY($1) AND expires_at <= $2",
                                   ids, now)
                states = {i: BucketState(tats.get(i)) for i in ids}
                for row in await conn.fetch(
                        f"SELECT bucket, holder, expires_at FROM {self.holders_table} WHERE bucket = ANY($1)", ids):
                    states[row["bucket"]].holders[row["holder"]] = row["expires_at"]
                ordered = [states[b.id] for b in buckets]
                verdict = decide(buckets, ordered, now, holder, ticket=ticket,
                                 concurrency_delay_s=concurrency_delay_s, ttl_s=ttl_s)
                changed = [(b.id, s.tat) for b, s in zip(buckets, ordered, strict=True) if s.tat != tats.get(b.id)]
                if changed:  # an upsert: a prune elsewhere may have dropped the row meanwhile
                    await conn.executemany(f"INSERT INTO {self.buckets_table} (id, tat) VALUES ($1, $2)"
                                           " ON CONFLICT (id) DO UPDATE SET tat = excluded.tat", changed)
                await self._settle_waiting(conn, verdict, buckets, holder, now, ttl_s)
                counts = []
                for limit in limits:
                    await conn.execute(f"DELETE FROM {self.waiting_table} WHERE limit_name = $1 AND expires_at <= $2",
                                       limit, now)
                    counts.append((limit, int(await conn.fetchval(
                        f"SELECT count(*) FROM {self.waiting_table} WHERE limit_name = $1", limit))))
        return dataclasses.replace(verdict, waiting=tuple(counts))

    async def _settle_waiting(self, conn: asyncpg.Connection, verdict: Verdict, buckets: Sequence[Bucket],
                              holder: str, now: float, ttl_s: float) -> None:
        if verdict.admitted:
            held = [b.id for b in buckets if b.max_concurrency is not None]
            if held:
                await conn.executemany(
                    f"INSERT INTO {self.holders_table} (bucket, holder, expires_at) VALUES ($1, $2, $3)"
                    " ON CONFLICT (bucket, holder) DO UPDATE SET expires_at = excluded.expires_at",
                    [(bucket_id, holder, now + ttl_s) for bucket_id in held])
            await conn.execute(f"DELETE FROM {self.waiting_table} WHERE limit_name = ANY($1) AND holder = $2",
                               limits_of(buckets), holder)
        elif verdict.blocked is not None:
            await conn.execute(
                f"INSERT INTO {self.waiting_table} (limit_name, holder, expires_at, bucket) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (limit_name, holder) DO UPDATE SET expires_at = excluded.expires_at,"
                " bucket = excluded.bucket",
                verdict.blocked, holder, now + verdict.delay_s + WAITING_GRACE_S, bucket_of(buckets, verdict.blocked))

    async def snapshot(self, limits: Sequence[str]) -> list[LimitState]:
        """Each figure reads at most SNAPSHOT_ROWS rows along a primary key (a limit's bucket ids are
        `id = limit` or its key range, compared in byte order as the columns are; waiting entries lead
        with the limit's name). One read-only transaction: the figures agree with each other."""
        buckets = '(id = $1 OR (id >= $2 COLLATE "C" AND id < $3 COLLATE "C"))'
        # Every id read out is "C" too, so the unions compare alike in tables of any version.
        held = (f'SELECT bucket COLLATE "C" AS bucket FROM {self.holders_table} WHERE (bucket = $1'
                ' OR (bucket >= $2 COLLATE "C" AND bucket < $3 COLLATE "C")) AND expires_at > $4 LIMIT $5')
        waiting = (f'SELECT bucket COLLATE "C" AS bucket FROM {self.waiting_table}'
                   " WHERE limit_name = $1 AND expires_at > $4 LIMIT $5")
        figures = (
            f"SELECT (SELECT count(*) FROM ({waiting}) w) AS waiting, (SELECT count(*) FROM ({held}) h) AS in_flight,"
            f" (SELECT max(tat) FROM (SELECT tat FROM {self.buckets_table} WHERE {buckets} AND tat > $4 LIMIT $5) r)"
            " AS reserved_until,"
            f' (SELECT count(*) FROM ((SELECT id COLLATE "C" FROM {self.buckets_table} WHERE {buckets} AND tat > $4'
            " LIMIT $5)"
            f" UNION ({held}) UNION (SELECT bucket FROM ({waiting}) w WHERE bucket IS NOT NULL)) k) AS keys")
        top = (f"SELECT bucket, sum(w) AS w, sum(f) AS f FROM (SELECT bucket, 1 AS w, 0 AS f FROM ({waiting}) w"
               f" UNION ALL SELECT bucket, 0, 1 FROM ({held}) h) l WHERE bucket IS NOT NULL"
               " GROUP BY bucket ORDER BY w DESC, f DESC, bucket LIMIT $6")
        states = []
        with _mapped("snapshot"):
            async with self._db.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
                now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
                for limit in limits:
                    args = (limit, *key_range(limit), now, SNAPSHOT_ROWS)
                    row = await conn.fetchrow(figures, *args)
                    # One more than named: the unkeyed bucket (id = limit) may be among them.
                    loads = [(r["bucket"], int(r["w"]), int(r["f"]))
                             for r in await conn.fetch(top, *args, TOP_KEYS + 1)]
                    states.append(LimitState(limit, waiting=int(row["waiting"]), in_flight=int(row["in_flight"]),
                                             keys=int(row["keys"]), reserved_until=row["reserved_until"],
                                             top_keys=top_keys(limit, loads)))
        return states

    async def release(self, buckets: Sequence[Bucket], holder: str) -> None:
        held = [b.id for b in buckets if b.max_concurrency is not None]
        if held:
            with _mapped("release"):
                await self._db.execute(f"DELETE FROM {self.holders_table} WHERE bucket = ANY($1) AND holder = $2",
                                       held, holder)

    async def refresh(self, buckets: Sequence[Bucket], holder: str, ttl_s: float) -> None:
        held = [b.id for b in buckets if b.max_concurrency is not None]
        if held:
            with _mapped("refresh"):
                await self._db.execute(
                    f"UPDATE {self.holders_table} SET expires_at = extract(epoch FROM clock_timestamp()) + $3"
                    " WHERE bucket = ANY($1) AND holder = $2", held, holder, ttl_s)
