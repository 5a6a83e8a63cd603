"""The shared accounting of flow limits: what every store's ledger does, and the decision itself.

Rate is GCRA, the token bucket written as one time per bucket (`tat`, the theoretical arrival time):
a request conforms when `tat - now <= (burst - 1) / rate`. A request that does not is not refused but
given a reservation: the bucket's `tat` moves on by one interval as if it had run at its conformance
time, and the request comes back then holding that ticket. So each waiting request is deferred once
for rate (no polling), and requests of one key queue only behind their own key's reservations.

Concurrency is a set of holders per bucket, each with an expiry (a lease the running worker renews):
a worker that dies mid-call frees its slot when the lease runs out. A request is admitted only when
every bucket it counts against has a slot; the ledgers apply `decide` (or, on Redis, the same steps
in Lua) atomically over all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from openhqm.flow.limits import Bucket, key_of

WAITING_GRACE_S = 30.0  # a waiting entry outlives its next attempt by this much (a request cancelled meanwhile)
# Every this many decisions a process drops buckets whose time is past: such a bucket is full, the
# same as no row at all, so keys no longer used do not pile up (Redis expires its keys instead).
PRUNE_EVERY = 1000
TOP_KEYS = 10  # the keys a snapshot names per limit: the most held
# A snapshot reads at most this many entries (buckets, holders, waiting requests) per figure and
# limit, so its cost is bounded whatever the backlog; a figure beyond it shows as this many.
SNAPSHOT_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    delay_s: float = 0.0
    ticket_at: float | None = None  # rate tokens reserved for this time (set when rate made it wait)
    blocked: str | None = None  # the limit that made it wait
    waiting: tuple[tuple[str, int], ...] = ()  # (limit, requests waiting on it now) for each limit touched


@dataclass(slots=True)
class BucketState:
    tat: float | None = None  # None: the bucket is full
    holders: dict[str, float] = field(default_factory=dict)  # holder -> lease expiry


@dataclass(frozen=True, slots=True)
class KeyLoad:
    key: str  # the key value as it names its bucket (limits.bucket_key: long values hashed)
    waiting: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit across every process sharing the store, at one moment (GET /api/v1/flow)."""

    limit: str
    waiting: int = 0  # requests waiting on it (their waiting entry not yet expired)
    in_flight: int = 0  # concurrency slots held, over all its buckets
    keys: int = 0  # buckets with anything in them: a reservation ahead, a slot held, a request waiting
    reserved_until: float | None = None  # the latest `tat` ahead of now over its buckets (epoch s)
    top_keys: tuple[KeyLoad, ...] = ()  # keyed limits only: the most waiting, then most running


def top_keys(limit: str, loads: Iterable[tuple[str, int, int]]) -> tuple[KeyLoad, ...]:
    """The TOP_KEYS busiest of (bucket id, waiting, in flight), the limit's unkeyed bucket left out."""
    found = [KeyLoad(key, waiting, in_flight) for ident, waiting, in_flight in loads
             if (waiting or in_flight) and (key := key_of(limit, ident)) is not None]
    found.sort(key=lambda load: (-load.waiting, -load.in_flight, load.key))
    return tuple(found[:TOP_KEYS])


class Ledger(Protocol):
    """One per store kind (memory, sqlite, redis, postgres); the Limiter's only way to the store."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, buckets: Sequence[Bucket], holder: str, *, ticket: bool, concurrency_delay_s: float,
                      ttl_s: float) -> Verdict:
        """Admit `holder` into every bucket, or say how long it waits. `ticket`: it holds reserved rate
        tokens already (only concurrency is checked). `concurrency_delay_s`: the longest a request
        refused a slot waits before it looks again (its waiting entry lasts that long, plus a grace).
        Atomic over all buckets, across processes."""
        ...

    async def release(self, buckets: Sequence[Bucket], holder: str) -> None:
        """Free its concurrency slots (rate tokens are spent: a call that started counts)."""
        ...

    async def refresh(self, buckets: Sequence[Bucket], holder: str, ttl_s: float) -> None:
        """Renew its slots' lease while it runs."""
        ...

    async def snapshot(self, limits: Sequence[str]) -> list[LimitState]:
        """Each named limit's state now, across processes (one LimitState per name, in order): a read
        whose work is bounded (SNAPSHOT_ROWS), for the console, /api/v1/flow and the gauges."""
        ...


def decide(buckets: Sequence[Bucket], states: Sequence[BucketState], now: float, holder: str, *, ticket: bool,
           concurrency_delay_s: float, ttl_s: float) -> Verdict:
    """Update `states` (one per bucket) in place and say whether `holder` runs now; pure, so every
    SQL ledger runs the same steps inside its own transaction."""
    for bucket, state in zip(buckets, states, strict=True):
        if bucket.max_concurrency is None:
            continue
        for name in [h for h, expiry in state.holders.items() if expiry <= now]:
            del state.holders[name]
        if holder not in state.holders and len(state.holders) >= bucket.max_concurrency:
            return Verdict(False, concurrency_delay_s, blocked=bucket.limit)
    if not ticket:
        start, blocked = now, None
        for bucket, state in zip(buckets, states, strict=True):
            if bucket.rate_per_s is None:
                continue
            conforms_at = max(state.tat or now, now) - (bucket.burst - 1) / bucket.rate_per_s
            if conforms_at > start:
                start, blocked = conforms_at, bucket.limit
        for bucket, state in zip(buckets, states, strict=True):
            if bucket.rate_per_s is not None:
                state.tat = max(state.tat or now, start) + 1 / bucket.rate_per_s
        if blocked is not None:
            return Verdict(False, start - now, ticket_at=start, blocked=blocked)
    for bucket, state in zip(buckets, states, strict=True):
        if bucket.max_concurrency is not None:
            state.holders[holder] = now + ttl_s
    return Verdict(True)


def limits_of(buckets: Sequence[Bucket]) -> list[str]:
    return sorted({bucket.limit for bucket in buckets})


def bucket_of(buckets: Sequence[Bucket], limit: str) -> str:
    """The id of the request's bucket of `limit` (a waiting entry names it, for the snapshot's keys)."""
    return next(bucket.id for bucket in buckets if bucket.limit == limit)
