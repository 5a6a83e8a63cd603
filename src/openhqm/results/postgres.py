"""PostgreSQL result store (`results.type: postgres`), for API replicas that share one database.

Settings: `results.postgres.dsn` (postgresql://user:password@host:port/db) and `results.postgres.table`
(default `openhqm_requests`; dead letters go to `<table>_dead_letters`, keyed state to `<table>_state`).
`connect()` creates the tables and their indexes if missing, and adds a column for any RequestRecord
field the table lacks.
Each record field is a column (values of no plain SQL type, such as `result`, are msgpack bytea), so a
transition is one `UPDATE ... WHERE status = ANY(allowed) RETURNING <its columns>`: atomic, no locks or retries.
The same statement calls `pg_notify('<table>', id)` when the record becomes terminal; NOTIFY is
delivered at commit. Each store keeps one LISTEN connection (outside its pool), reopens it with
bounded backoff when it drops, and then re-checks every waited id, so a notification sent while it
was disconnected still wakes the waiter. Cleanup is one DELETE of terminal rows by completion time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import asyncpg
import msgspec

from openhqm.backends.base import Health
from openhqm.config import Settings
from openhqm.constants import TERMINAL
from openhqm.errors import AlreadyExists, BackendError, BackendUnavailable, ConfigError
from openhqm.logging import get_logger
from openhqm.policies import READINESS_RECONNECT_BACKOFF, Reconnect
from openhqm.redact import mask_url
from openhqm.results import postgres_queries as queries
from openhqm.results.base import SCHEDULE_STATE, DeadLetterRecord, RequestRecord, ResultStore
from openhqm.results.postgres_columns import COLUMNS, quote, to_record, to_row
from openhqm.results.queries import FilteredCounts, Position, RequestFilter, RequestPage, Stream, merge
from openhqm.results.series import FINISHED, FinishedMinute, measured, minute_starts

log = get_logger("openhqm.results")

POOL_MIN_SIZE, POOL_MAX_SIZE = 1, 10
HEALTH_TIMEOUT_S, CLOSE_TIMEOUT_S = 1.5, 5.0
LISTENER_CHECK_INTERVAL_S = 30.0  # how often an idle LISTEN connection is probed (half-open TCP)

_encode = msgspec.msgpack.Encoder().encode
_decode_dead = msgspec.msgpack.Decoder(DeadLetterRecord).decode
_TERMINAL = sorted(str(s) for s in TERMINAL)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in _TERMINAL)  # constants from code, inlined for the partial index
ENVELOPE = "envelope"  # a column of its own, beside the record's: written at create, read by the detail only


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    """The one place where asyncpg errors become openhqm errors."""
    try:
        yield
    # InternalClientError ("another operation is in progress"): a pooled connection whose call the
    # server's crash cut off, met by the next caller until the pool drops it: the server is away.
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError, asyncpg.exceptions.OperatorInterventionError,
            asyncpg.InternalClientError) as exc:
        raise BackendUnavailable(f"postgres result store: {action}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BackendError(f"postgres result store: {action}: {exc}") from exc


def create(settings: Settings) -> PostgresResultStore:
    section = settings.results.postgres
    return PostgresResultStore(section.dsn.get_secret_value(), table=section.table)


class PostgresResultStore(ResultStore):
    name = "postgres"

    def __init__(self, dsn: str, *, table: str = "openhqm_requests") -> None:
        super().__init__()
        self._dsn = dsn
        self._channel = table
        self._table, self._dead = quote(table), quote(f"{table}_dead_letters")
        self._state = quote(f"{table}_state")
        self._state_channel = f"{table}_state"  # NOTIFY with the kind on every keyed-state write
        self._legacy_schedules = quote(f"{table}_schedules")  # moved into `_state` on connect
        self._index = {kind: quote(f"{table}_{kind}") for kind in ("session", "done", "status", "submitted")}
        self._columns = ", ".join(map(quote, COLUMNS))  # never `*`: the envelope stays where it is
        self._pool: asyncpg.Pool | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BackendUnavailable("postgres result store is not connected; call connect() first")
        return self._pool

    @property
    def listener_pid(self) -> int | None:
        """Server process id of the LISTEN connection (what pg_terminate_backend takes)."""
        conn = self._listen_conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    async def connect(self) -> None:
        if self._pool is not None:
            return
        with _mapped("connect"):
            try:
                pool = await asyncpg.create_pool(self._dsn, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE)
            except asyncpg.ClientConfigurationError as exc:
                raise ConfigError(f"results.postgres.dsn {mask_url(self._dsn)!r}: {exc}") from exc
            try:
                await self._create_schema(pool)
                self._pool = pool
                await self._open_listener()
            except BaseException:
                self._pool = None
                await pool.close()
                raise
        self._supervisor = asyncio.create_task(self._supervise(), name="openhqm-postgres-store-listen")

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._listen_conn is not None:
            self._listen_conn.terminate()  # only LISTENs; nothing to finish
        pool, self._pool, self._listen_conn, self._supervisor = self._pool, None, None, None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await pool.close()  # waits for connections in use to be released
        except TimeoutError:
            pool.terminate()

    async def _create_schema(self, pool: asyncpg.Pool) -> None:
        t = self._table
        columns = ", ".join(f"{quote(name)} {sql}" for name, sql in COLUMNS.items()
                            if name != "correlation_id")
        async with pool.acquire() as conn, conn.transaction():
            # Replicas starting together would race on CREATE TABLE IF NOT EXISTS; serialise them.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"openhqm:{self._channel}")
            await conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {t} (correlation_id text PRIMARY KEY, {columns});
                CREATE INDEX IF NOT EXISTS {self._index['session']} ON {t} (session_id, submitted_at)
                    WHERE session_id IS NOT NULL;
                CREATE INDEX IF NOT EXISTS {self._index['done']} ON {t} ((COALESCE(completed_at, updated_at)))
                    WHERE status IN ({_TERMINAL_SQL});
                CREATE INDEX IF NOT EXISTS {self._index['status']} ON {t} (status);
                CREATE INDEX IF NOT EXISTS {self._index['submitted']} ON {t} (submitted_at, correlation_id);
                CREATE TABLE IF NOT EXISTS {self._dead} (
                    id text PRIMARY KEY, dead_lettered_at double precision NOT NULL, data bytea NOT NULL);
                CREATE TABLE IF NOT EXISTS {self._state} (
                    kind text NOT NULL, name text NOT NULL, data bytea NOT NULL, PRIMARY KEY (kind, name));
            """)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", self._legacy_schedules):
                await conn.execute(f"INSERT INTO {self._state} (kind, name, data) SELECT $1, name, data"
                                   f" FROM {self._legacy_schedules} ON CONFLICT DO NOTHING", SCHEDULE_STATE)
                await conn.execute(f"DROP TABLE {self._legacy_schedules}")
            present = {r["attname"] for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
                " AND NOT attisdropped", t)}
            wanted = {**COLUMNS, ENVELOPE: "bytea"}
            for name in wanted.keys() - present:  # a field added to RequestRecord since the table was made
                await conn.execute(f"ALTER TABLE {t} ADD COLUMN {quote(name)} {wanted[name]}")

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._wake(payload)

    def _on_state_notify(self, _conn: object, _pid: int, _channel: str, _kind: str) -> None:
        self._state_written.set()

    async def _open_listener(self) -> None:
        """Open the LISTEN connection; when this returns, every later NOTIFY reaches `_on_notify`."""
        conn = await asyncpg.connect(self._dsn)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, self._on_notify)
            await conn.add_listener(self._state_channel, self._on_state_notify)
        except BaseException:
            conn.terminate()
            raise
        self._listen_conn, self._listen_lost = conn, lost

    async def _supervise(self) -> None:
        """Reopen the LISTEN connection whenever it drops, then wake waiters whose NOTIFY was lost."""
        reconnect, recheck = Reconnect(READINESS_RECONNECT_BACKOFF), False
        while True:
            try:
                if self.listener_pid is None:
                    await self._open_listener()
                    log.info("result store listener reconnected")
                    recheck = True
                if recheck:
                    self._state_written.set()  # a state NOTIFY may have been missed too
                    await self._wake_finished()
                    recheck = False
            except Exception as exc:
                log.warning("result store listener lost; reconnecting", error=str(exc),
                            retry_in_s=round(reconnect.next_delay_s, 3))
                await reconnect.wait()
                continue
            reconnect.reset()
            try:
                async with asyncio.timeout(LISTENER_CHECK_INTERVAL_S):
                    await self._listen_lost.wait()
            except TimeoutError:
                await self._probe_listener()

    async def _probe_listener(self) -> None:
        # A dead peer without a FIN/RST (network partition) is noticed only by talking to it.
        conn = self._listen_conn
        if conn is None:
            return
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await conn.fetchval("SELECT 1")
        except Exception:
            conn.terminate()

    async def _wake_finished(self) -> None:
        ids = self.waited_ids
        if not ids:
            return
        with _mapped("wake"):
            rows = await self._db.fetch(
                f"SELECT correlation_id FROM {self._table} WHERE correlation_id = ANY($1::text[])"
                " AND status = ANY($2::text[])", ids, _TERMINAL)
        for row in rows:
            self._wake(row["correlation_id"])

    @staticmethod
    def _notify_sql(source: str, terminal: str, channel: str) -> str:
        """Select `source`'s rows, notifying for each terminal one; NOTIFY is sent at commit."""
        return (f"SELECT {source}.*, CASE WHEN status = ANY({terminal}::text[])"
                f" THEN pg_notify({channel}, correlation_id) END AS _notified FROM {source}")

    async def create(self, record: RequestRecord, envelope: bytes | None = None) -> None:
        names = [*COLUMNS, ENVELOPE]
        marks = ", ".join(f"${i}" for i in range(3, len(names) + 3))
        sql = (f"WITH inserted AS (INSERT INTO {self._table} ({', '.join(map(quote, names))})"
               f" VALUES ({marks}) RETURNING correlation_id, status) "
               + self._notify_sql("inserted", "$1", "$2"))
        values = [*(to_row(name, getattr(record, name)) for name in COLUMNS), envelope]
        with _mapped("create"):
            try:
                await self._db.fetch(sql, _TERMINAL, self._channel, *values)
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"request {record.correlation_id} exists") from exc

    async def delete(self, correlation_id: str) -> None:
        with _mapped("delete"):
            await self._db.execute(f"DELETE FROM {self._table} WHERE correlation_id = $1", correlation_id)

    async def get(self, correlation_id: str) -> RequestRecord | None:
        with _mapped("get"):
            row = await self._db.fetchrow(f"SELECT {self._columns} FROM {self._table} WHERE correlation_id = $1",
                                          correlation_id)
        return None if row is None else to_record(row)

    async def _transition(self, correlation_id: str, changes: dict[str, Any],
                          allowed_from: Iterable[str] | None) -> RequestRecord | None:
        names = sorted(changes)
        if not set(names) <= COLUMNS.keys() - {"correlation_id"}:
            raise TypeError(f"a transition cannot set {names}: not all are RequestRecord fields")
        assignments = ", ".join(f"{quote(name)} = ${i}" for i, name in enumerate(names, start=5))
        condition = "status <> ALL($2::text[])" if allowed_from is None else "status = ANY($2::text[])"
        sql = (f"WITH updated AS (UPDATE {self._table} SET {assignments}"
               f" WHERE correlation_id = $1 AND {condition} RETURNING {self._columns}) "
               + self._notify_sql("updated", "$3", "$4"))
        statuses = _TERMINAL if allowed_from is None else [str(s) for s in allowed_from]
        values = [to_row(name, changes[name]) for name in names]
        with _mapped("transition"):
            row = await self._db.fetchrow(sql, correlation_id, statuses, _TERMINAL, self._channel, *values)
        return None if row is None else to_record(row)

    async def get_envelope(self, correlation_id: str) -> bytes | None:
        sql = f"SELECT {ENVELOPE} FROM {self._table} WHERE correlation_id = $1"
        with _mapped("get_envelope"):
            data = await self._db.fetchval(sql, correlation_id)
        return None if data is None else bytes(data)

    async def query(self, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
        (sql, args), stop_query = queries.page_sql(self._table, self._columns, where, after, limit)
        with _mapped("query"):
            records = [to_record(row) for row in await self._db.fetch(sql, *args)]
            stop = Position.of(records[-1]) if len(records) == limit else None
            if stop is None and stop_query is not None:
                row = await self._db.fetchrow(stop_query[0], *stop_query[1])
                stop = None if row is None else Position(row["submitted_at"], row["correlation_id"])
        return merge([Stream(records, stop)], limit)

    async def count_matching(self, where: RequestFilter) -> FilteredCounts:
        sql, args = queries.counts_sql(self._table, where)
        with _mapped("count_matching"):
            rows = await self._db.fetch(sql, *args)
        return FilteredCounts({row["status"]: int(row["n"]) for row in rows})

    async def list_session(self, session_id: str, limit: int = 1000) -> list[RequestRecord]:
        if limit <= 0:
            return []
        with _mapped("list_session"):
            rows = await self._db.fetch(
                f"SELECT {self._columns} FROM {self._table} WHERE session_id = $1 ORDER BY submitted_at LIMIT $2",
                session_id, limit)
        return [to_record(row) for row in rows]

    async def unfinished_submitted_before(self, before: float, limit: int = 100) -> list[RequestRecord]:
        with _mapped("unfinished_submitted_before"):
            rows = await self._db.fetch(
                f"SELECT {self._columns} FROM {self._table} WHERE status <> ALL($1::text[]) AND submitted_at < $2"
                " ORDER BY submitted_at LIMIT $3", _TERMINAL, before, limit)
        return [to_record(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        with _mapped("counts"):
            rows = await self._db.fetch(f"SELECT status, count(*) AS n FROM {self._table} GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}

    async def cleanup(self, older_than: float, statuses: Collection[str] | None = None) -> int:
        if statuses is not None and not statuses:
            return 0
        chosen = list(statuses) if statuses is not None else _TERMINAL
        with _mapped("cleanup"):
            status = await self._db.execute(
                f"DELETE FROM {self._table} WHERE status = ANY($2::text[])"
                " AND COALESCE(completed_at, updated_at) < $1", older_than, chosen)
        return int(status.split()[-1])

    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        with _mapped("add_dead_letter"):
            await self._db.execute(
                f"INSERT INTO {self._dead} (id, dead_lettered_at, data) VALUES ($1, $2, $3)"
                " ON CONFLICT (id) DO UPDATE SET dead_lettered_at = EXCLUDED.dead_lettered_at,"
                " data = EXCLUDED.data",
                record.id, record.dead_lettered_at, _encode(record))

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRecord]:
        if limit <= 0:
            return []
        with _mapped("list_dead_letters"):
            rows = await self._db.fetch(
                f"SELECT data FROM {self._dead} ORDER BY dead_lettered_at LIMIT $1", limit)
        return [_decode_dead(row["data"]) for row in rows]

    async def take_dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        with _mapped("take_dead_letter"):
            data = await self._db.fetchval(f"DELETE FROM {self._dead} WHERE id = $1 RETURNING data",
                                           dead_letter_id)
        return None if data is None else _decode_dead(data)

    async def purge_dead_letters(self) -> int:
        with _mapped("purge_dead_letters"):
            return int((await self._db.execute(f"DELETE FROM {self._dead}")).split()[-1])

    async def _put_state(self, kind: str, name: str, data: bytes | None) -> None:
        if data is None:
            write = f"DELETE FROM {self._state} WHERE kind = $1 AND name = $2 RETURNING kind"
        else:
            write = (f"INSERT INTO {self._state} (kind, name, data) VALUES ($1, $2, $4) ON CONFLICT (kind, name)"
                     " DO UPDATE SET data = EXCLUDED.data RETURNING kind")
        with _mapped("put_state"):  # NOTIFY (at commit) wakes the other processes' state_written
            await self._db.execute(f"WITH written AS ({write}) SELECT pg_notify($3, kind) FROM written",
                                   kind, name, self._state_channel, *([] if data is None else [data]))

    async def states(self, kind: str) -> dict[str, bytes]:
        with _mapped("states"):
            rows = await self._db.fetch(f"SELECT name, data FROM {self._state} WHERE kind = $1", kind)
        return {row["name"]: bytes(row["data"]) for row in rows}

    async def finished_series(self, since: float, until: float) -> list[FinishedMinute]:
        # Exact percentiles, computed in the database over the window's rows (on the `done` index).
        sql = (f"SELECT floor(completed_at / 60) * 60 AS at,"
               f" count(*) FILTER (WHERE status = $3) AS completed, count(*) FILTER (WHERE status = $4) AS failed,"
               f" percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY completed_at - submitted_at) AS p"
               f" FROM {self._table} WHERE status IN ({_TERMINAL_SQL}) AND status IN ($3, $4)"
               f" AND COALESCE(completed_at, updated_at) >= $1 AND COALESCE(completed_at, updated_at) < $2"
               f" AND completed_at IS NOT NULL GROUP BY 1")
        with _mapped("finished_series"):
            rows = {row["at"]: row for row in await self._db.fetch(sql, since, until, *FINISHED)}
        return [FinishedMinute(at=at) if at not in rows else measured(
            at, rows[at]["completed"], rows[at]["failed"], rows[at]["p"]) for at in minute_starts(since, until)]

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self._db.fetchval("SELECT 1")
        except Exception as exc:
            return Health(False, f"postgres store: {type(exc).__name__}: {exc}")
        if self.listener_pid is None:
            return Health(False, "postgres store: the LISTEN connection is down; reconnecting")
        return Health(True)
