"""Flow limits in this process's memory (`results.type: memory`): they hold per process, not across
processes, as the memory store itself does."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from openhqm.flow.ledger import PRUNE_EVERY, WAITING_GRACE_S, BucketState, Verdict, decide, limits_of
from openhqm.flow.limits import Bucket


class MemoryLedger:
    def __init__(self) -> None:
        self._buckets: dict[str, BucketState] = {}
        self._waiting: dict[str, dict[str, float]] = {}  # limit -> holder -> expiry
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
        states = [self._buckets.setdefault(b.id, BucketState()) for b in buckets]
        verdict = decide(buckets, states, now, holder, ticket=ticket, concurrency_delay_s=concurrency_delay_s,
                         ttl_s=ttl_s)
        if verdict.admitted:
            for limit in limits_of(buckets):
                self._waiting.get(limit, {}).pop(holder, None)
        elif verdict.blocked is not None:
            self._waiting.setdefault(verdict.blocked, {})[holder] = now + verdict.delay_s + WAITING_GRACE_S
        counts = []
        for limit in limits_of(buckets):
            waiting = self._waiting.get(limit, {})
            for name in [h for h, expiry in waiting.items() if expiry <= now]:
                del waiting[name]
            counts.append((limit, len(waiting)))
        return dataclasses.replace(verdict, waiting=tuple(counts))

    def _prune(self, now: float) -> None:
        idle = [i for i, s in self._buckets.items() if (s.tat is None or s.tat <= now)
                and all(expiry <= now for expiry in s.holders.values())]
        for ident in idle:
            del self._buckets[ident]

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
