"""Flow limits in this process's memory (`results.type: memory`): they hold per process, not across
processes, as the memory store itself does."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Sequence

from openhqm.flow.ledger import (
    PRUNE_EVERY,
    SNAPSHOT_ROWS,
    WAITING_GRACE_S,
    BucketState,
    LimitState,
    Verdict,
    bucket_of,
    decide,
    limits_of,
    top_keys,
)
from openhqm.flow.limits import Bucket


class MemoryLedger:
    def __init__(self) -> None:
        self._buckets: dict[str, BucketState] = {}
        self._by_limit: dict[str, set[str]] = {}  # limit -> its bucket ids (the snapshot reads one limit's)
        self._waiting: dict[str, dict[str, tuple[float, str]]] = {}  # limit -> holder -> (expiry, bucket id)
        self._decisions = 0

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def acquire(self, buckets: Sequence[Bucket], holder: str, *, ticket: bool, concurrency_delay_s: float,
                      ttl_s: float) -> Verdict:
        now = time.time()
        self._decisions += 1
        if self._decisions % PRUNE_EVERY == 0:
            self._prune(now)
        states = []
        for bucket in buckets:
            if bucket.id not in self._buckets:
                self._buckets[bucket.id] = BucketState()
                self._by_limit.setdefault(bucket.limit, set()).add(bucket.id)
            states.append(self._buckets[bucket.id])
        verdict = decide(buckets, states, now, holder, ticket=ticket, concurrency_delay_s=concurrency_delay_s,
                         ttl_s=ttl_s)
        if verdict.admitted:
            for limit in limits_of(buckets):
                self._waiting.get(limit, {}).pop(holder, None)
        elif verdict.blocked is not None:
            self._waiting.setdefault(verdict.blocked, {})[holder] = (now + verdict.delay_s + WAITING_GRACE_S,
                                                                     bucket_of(buckets, verdict.blocked))
        counts = []
        for limit in limits_of(buckets):
            waiting = self._waiting.get(limit, {})
            for name in [h for h, (expiry, _) in waiting.items() if expiry <= now]:
                del waiting[name]
            counts.append((limit, len(waiting)))
        return dataclasses.replace(verdict, waiting=tuple(counts))

    def _prune(self, now: float) -> None:
        idle = [i for i, s in self._buckets.items() if (s.tat is None or s.tat <= now)
                and all(expiry <= now for expiry in s.holders.values())]
        for ident in idle:
            del self._buckets[ident]
        for ids in self._by_limit.values():
            ids.difference_update(idle)

    async def release(self, buckets: Sequence[Bucket], holder: str) -> None:
        for bucket in buckets:
            state = self._buckets.get(bucket.id)
            if state is not None:
                state.holders.pop(holder, None)

    async def refresh(self, buckets: Sequence[Bucket], holder: str, ttl_s: float) -> None:
        for bucket in buckets:
            state = self._buckets.get(bucket.id)
            if state is not None and holder in state.holders:
                state.holders[holder] = time.time() + ttl_s

    async def snapshot(self, limits: Sequence[str]) -> list[LimitState]:
        now = time.time()
        return [self._state(limit, now) for limit in limits]

    def _state(self, limit: str, now: float) -> LimitState:
        waiting = Counter(ident for expiry, ident in itertools.islice(
            self._waiting.get(limit, {}).values(), SNAPSHOT_ROWS) if expiry > now)
        loads, reserved = [], []
        for ident in itertools.islice(self._by_limit.get(limit, ()), SNAPSHOT_ROWS):
            state = self._buckets[ident]
            in_flight = sum(expiry > now for expiry in state.holders.values())
            ahead = state.tat is not None and state.tat > now
            if ahead:
                reserved.append(state.tat or 0.0)
            if in_flight or ahead or waiting[ident]:
                loads.append((ident, waiting[ident], in_flight))
        seen = {ident for ident, _, _ in loads}
        loads += [(ident, count, 0) for ident, count in waiting.items() if ident not in seen]
        return LimitState(limit, waiting=waiting.total(), in_flight=sum(load[2] for load in loads), keys=len(loads),
                          reserved_until=max(reserved, default=None), top_keys=top_keys(limit, loads))
