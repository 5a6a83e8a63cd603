"""The Limiter the worker calls once per delivery, before the target runs (worker/processor.py).

Admitted: the request runs, holding a concurrency slot (a lease renewed while it runs, released
when it ends, whatever the outcome). Not admitted: LimitWait, which the processor turns into a
deferral -- PENDING with `waiting_on: "limit:<name>"` and `next_attempt_at`, the message republished
for that time, no try counted. A rate wait comes back holding a reservation (`Envelope.flow_ticket`),
so it runs then without queuing again; a concurrency wait backs off (see slot_wait_s) and asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from openhqm import metrics
from openhqm.envelope import Envelope
from openhqm.errors import BackendError, ConfigError, LimitWait
from openhqm.flow.ledger import Ledger
from openhqm.flow.limits import Bucket, Limit, configured_limits
from openhqm.logging import get_logger
from openhqm.policies import Backoff

if TYPE_CHECKING:
    from openhqm.config import Settings

log = get_logger("openhqm.flow")

SLOT_TTL_S = 30.0  # a crashed worker's slot is free again after this; renewed every third of it
# A request refused a slot looks again after a backoff from 25 ms that grows with its looks, up to
# about twice the time requests hold the limit's slots (as this process saw it), so a freed slot is
# soon taken; with a long queue for slots, longer: each waiter looks about once per (waiting x
# LOOK_PER_WAITER_S), so 10,000 waiters cost some 300 looks a second, not 10,000; never over 30 s.
FIRST_LOOK_S = 0.05
DEFAULT_HOLD_S = 0.5  # until this process has seen a request of the limit end
LOOK_PER_WAITER_S = 0.003
MAX_CONCURRENCY_WAIT_S = 30.0
EARLY_S = 0.01  # a delivery this much before its ticket waits again (a broker's delay ran short)


class HoldTimes:
    """How long requests hold each limit's slots, as this process saw them end (a moving average)."""

    def __init__(self) -> None:
        self._held_s: dict[str, float] = {}

    def observe(self, limits: Sequence[str], held_s: float) -> None:
        for name in limits:
            previous = self._held_s.get(name)
            self._held_s[name] = held_s if previous is None else previous + 0.2 * (held_s - previous)

    def get(self, limit: str) -> float:
        return self._held_s.get(limit, DEFAULT_HOLD_S)


def slot_wait_s(waits: int, waiting: int, hold_s: float) -> float:
    """The backoff of a request refused a slot for the `waits`-th time, `waiting` requests waiting."""
    cap = min(MAX_CONCURRENCY_WAIT_S, max(FIRST_LOOK_S, 2 * hold_s, waiting * LOOK_PER_WAITER_S))
    return Backoff(min(FIRST_LOOK_S, cap), cap).delay_s(waits + 1)


class Grant:
    """The slots one admitted request holds; `release()` frees them and stops the lease renewal."""

    def __init__(self, ledger: Ledger, buckets: Sequence[Bucket], holder: str, ttl_s: float,
                 holds: HoldTimes) -> None:
        self._ledger, self._buckets, self._holder, self._ttl_s = ledger, buckets, holder, ttl_s
        self._holds, self._started = holds, time.monotonic()
        self._renewing: asyncio.Task[None] | None = None
        # A timer, not a task per request: most requests end long before the first renewal is due.
        self._timer = asyncio.get_running_loop().call_later(ttl_s / 3, self._start_renewing)

    def _start_renewing(self) -> None:
        self._renewing = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            try:
                await self._ledger.refresh(self._buckets, self._holder, self._ttl_s)
            except BackendError as exc:
                log.warning("flow slot lease not renewed", error=str(exc))
            await asyncio.sleep(self._ttl_s / 3)

    async def release(self) -> None:
        self._holds.observe([b.limit for b in self._buckets if b.max_concurrency is not None],
                            time.monotonic() - self._started)
        self._timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()
        try:
            await self._ledger.release(self._buckets, self._holder)
        except BackendError as exc:  # the slot's lease frees it in at most SLOT_TTL_S
            log.warning("flow slot not released; its lease will expire", error=str(exc))


class Limiter:
    def __init__(self, by_endpoint: dict[str, list[Limit]], by_handler: dict[str, list[Limit]], ledger: Ledger,
                 *, slot_ttl_s: float = SLOT_TTL_S) -> None:
        self._by_endpoint = by_endpoint
        self._by_handler = by_handler
        self.ledger = ledger
        self.slot_ttl_s = slot_ttl_s
        self.holds = HoldTimes()

    async def connect(self) -> None:
        await self.ledger.connect()

    async def close(self) -> None:
        await self.ledger.close()

    def covering(self, envelope: Envelope) -> list[Limit]:
        if envelope.endpoint is not None:
            return self._by_endpoint.get(envelope.endpoint, [])
        return self._by_handler.get(envelope.handler or "", [])

    async def admit(self, envelope: Envelope, *, fresh: bool) -> Grant | None:
        """Let the request run (a Grant to release when it ends, or None when it holds no slot), or
        raise LimitWait. `fresh`: its first delivery, so a ticket it carries is its own reservation
        (a redelivery after a crash or a retry takes a token again)."""
        limits = self.covering(envelope)
        if not limits:
            return None
        ticket_at = envelope.flow_ticket if fresh else None
        now = time.time()
        if ticket_at is not None and ticket_at > now + EARLY_S:
            raise LimitWait("delivered before its reserved time", delay_s=ticket_at - now,
                            waiting_on=f"limit:{limits[0].name}", ticket_at=ticket_at, waits=envelope.flow_waits)
        buckets = [limit.bucket(envelope) for limit in limits]
        verdict = await self.ledger.acquire(
            buckets, envelope.correlation_id, ticket=ticket_at is not None, ttl_s=self.slot_ttl_s,
            concurrency_delay_s=MAX_CONCURRENCY_WAIT_S)  # recorded as its longest: see slot_wait_s
        for name, count in verdict.waiting:
            metrics.child(metrics.FLOW_WAITING, name).set(count)
        if not verdict.admitted:
            blocked = verdict.blocked or limits[0].name
            metrics.child(metrics.FLOW_DEFERRED, blocked).inc()
            by_rate = verdict.ticket_at is not None
            delay_s = verdict.delay_s if by_rate else slot_wait_s(
                envelope.flow_waits, dict(verdict.waiting).get(blocked, 0), self.holds.get(blocked))
            raise LimitWait(f"over flow limit {blocked!r}", delay_s=delay_s, waiting_on=f"limit:{blocked}",
                            ticket_at=verdict.ticket_at if by_rate else ticket_at,
                            waits=envelope.flow_waits + (0 if by_rate else 1))
        for limit in limits:
            metrics.child(metrics.FLOW_ADMITTED, limit.name).inc()
        if all(bucket.max_concurrency is None for bucket in buckets):
            return None
        return Grant(self.ledger, buckets, envelope.correlation_id, self.slot_ttl_s, self.holds)


def build_limiter(settings: Settings, handlers: Container[str]) -> Limiter | None:
    """The process's limiter, or None when no limit is configured (the worker then pays nothing)."""
    endpoints = settings.proxy.all_endpoints() if settings.proxy.enabled else {}
    by_endpoint, by_handler = configured_limits(settings.flow, endpoints)
    if not by_endpoint and not by_handler:
        return None
    for name, spec in settings.flow.limits.items():
        if spec.handler is not None and spec.handler not in handlers:
            raise ConfigError(f"setting 'flow.limits.{name}.handler' (got {spec.handler!r}): no such handler")
    return Limiter(by_endpoint, by_handler, create_ledger(settings))


def create_ledger(settings: Settings) -> Ledger:
    """The ledger in the result store's database: limits hold wherever that store is shared."""
    kind = settings.results.type
    if kind == "sqlite":
        from openhqm.backends.sqlite import SQLiteOptions
        from openhqm.flow.sqlite import SQLiteLedger

        options = settings.queue.options_for("sqlite", SQLiteOptions)
        return SQLiteLedger(settings.data_dir / "openhqm.db", synchronous=options.synchronous)
    if kind == "redis":
        from openhqm.flow.redis import RedisLedger

        section = settings.results.redis
        return RedisLedger(section.url.get_secret_value(), prefix=section.prefix)
    if kind == "postgres":
        from openhqm.flow.postgres import PostgresLedger

        return PostgresLedger(settings.results.postgres.dsn.get_secret_value(), table=settings.results.postgres.table)
    from openhqm.flow.memory import MemoryLedger

    return MemoryLedger()  # the memory store is per process, and so are its limits
