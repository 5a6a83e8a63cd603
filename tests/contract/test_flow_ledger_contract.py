"""The flow-limit ledger contract, run against the ledger of every result store target (memory,
sqlite, redis, postgres): acquire, release, reservations, keys and the lease of a crashed holder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest

from openhqm.flow.ledger import Ledger, LimitState, Verdict
from openhqm.flow.limiter import create_ledger
from openhqm.flow.limits import Bucket
from tests.contract.stores import TARGETS

LedgerFactory = Callable[[], Awaitable[Ledger]]
TTL_S = 30.0


@pytest.fixture(params=TARGETS, ids=[m.NAME for m in TARGETS])
async def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[LedgerFactory, bool]]:
    target: ModuleType = request.param
    settings = await target.make_settings(tmp_path)
    opened: list[Ledger] = []

    async def factory() -> Ledger:
        if opened and not target.CROSS_PROCESS:
            return opened[0]
        ledger = create_ledger(settings)
        await ledger.connect()
        opened.append(ledger)
        return ledger

    yield factory, target.CROSS_PROCESS
    for ledger in opened:
        await ledger.close()
    if (remove := getattr(target, "remove", None)) is not None:
        await remove(settings)


@pytest.fixture
async def ledger(make_ledger: tuple[LedgerFactory, bool]) -> Ledger:
    return await make_ledger[0]()


def rate(rate_per_s: float, burst: int, ident: str = "api") -> Bucket:
    return Bucket(ident, "api", rate_per_s, burst, None)


def slots(max_concurrency: int, ident: str = "pool") -> Bucket:
    return Bucket(ident, "pool", None, 1, max_concurrency)


async def acquire(ledger: Ledger, bucket: Bucket, holder: str, *, ticket: bool = False,
                  ttl_s: float = TTL_S) -> Verdict:
    return await ledger.acquire([bucket], holder, ticket=ticket, concurrency_delay_s=0.25, ttl_s=ttl_s)


async def test_burst_is_admitted_then_each_wait_reserves_the_next_token(ledger: Ledger) -> None:
    bucket = rate(0.5, 3)  # slow enough that no token comes back while the test runs, however loaded
    for n in range(3):
        assert (await acquire(ledger, bucket, f"r{n}")).admitted
    first, second = await acquire(ledger, bucket, "w1"), await acquire(ledger, bucket, "w2")
    assert not first.admitted and first.blocked == "api" and first.ticket_at is not None
    assert second.ticket_at is not None and second.ticket_at - first.ticket_at == pytest.approx(2.0, abs=0.01)
    assert 0 < first.delay_s <= 2.0 and second.delay_s > first.delay_s
    assert dict(second.waiting)["api"] == 2


async def test_a_request_holding_a_ticket_runs_without_another_token(ledger: Ledger) -> None:
    bucket = rate(0.1, 1)
    assert (await acquire(ledger, bucket, "a")).admitted
    waited = await acquire(ledger, bucket, "b")
    assert not waited.admitted
    admitted = await acquire(ledger, bucket, "b", ticket=True)
    assert admitted.admitted and dict(admitted.waiting)["api"] == 0


async def test_each_key_value_is_a_bucket_of_its_own(ledger: Ledger) -> None:
    assert (await acquire(ledger, rate(0.1, 1, "api=a"), "a1")).admitted
    assert not (await acquire(ledger, rate(0.1, 1, "api=a"), "a2")).admitted
    assert (await acquire(ledger, rate(0.1, 1, "api=b"), "b1")).admitted


async def test_concurrency_admits_up_to_its_limit_and_a_release_frees_a_slot(ledger: Ledger) -> None:
    bucket = slots(2)
    assert (await acquire(ledger, bucket, "a")).admitted
    assert (await acquire(ledger, bucket, "a")).admitted  # the same holder again takes no second slot
    assert (await acquire(ledger, bucket, "b")).admitted
    full = await acquire(ledger, bucket, "c")
    assert not full.admitted and full.blocked == "pool" and full.ticket_at is None and full.delay_s == 0.25
    await ledger.release([bucket], "a")
    assert (await acquire(ledger, bucket, "c")).admitted


async def test_the_slot_of_a_crashed_holder_frees_itself_when_its_lease_runs_out(ledger: Ledger) -> None:
    bucket = slots(1)
    assert (await acquire(ledger, bucket, "crashed", ttl_s=1.0)).admitted  # and never released
    assert not (await acquire(ledger, bucket, "next")).admitted
    deadline = time.monotonic() + 5
    while not (await acquire(ledger, bucket, "next")).admitted:
        assert time.monotonic() < deadline, "the expired slot was never freed"
        await asyncio.sleep(0.05)  # polling the ledger: the lease expiry is a time, not an event


async def test_a_renewed_lease_keeps_the_slot(ledger: Ledger) -> None:
    bucket = slots(1)
    assert (await acquire(ledger, bucket, "running", ttl_s=0.2)).admitted
    await ledger.refresh([bucket], "running", 30.0)
    await asyncio.sleep(0.3)  # past the first lease: time passing is what is tested
    assert not (await acquire(ledger, bucket, "next")).admitted


async def test_limits_are_shared_between_ledger_instances(make_ledger: tuple[LedgerFactory, bool]) -> None:
    factory, cross_process = make_ledger
    first, second = await factory(), await factory()
    if cross_process:
        assert first is not second
    bucket = slots(1)
    assert (await acquire(first, bucket, "a")).admitted
    assert not (await acquire(second, bucket, "b")).admitted
    await first.release([bucket], "a")
    assert (await acquire(second, bucket, "b")).admitted


async def test_a_request_is_admitted_only_when_every_bucket_has_room(ledger: Ledger) -> None:
    both = [rate(100.0, 100), slots(1)]
    assert (await ledger.acquire(both, "a", ticket=False, concurrency_delay_s=0.1, ttl_s=TTL_S)).admitted
    refused = await ledger.acquire(both, "b", ticket=False, concurrency_delay_s=0.1, ttl_s=TTL_S)
    assert not refused.admitted and refused.blocked == "pool"
    assert dict(refused.waiting) == {"api": 0, "pool": 1}


async def test_pruning_keeps_buckets_that_still_count_and_held_slots(ledger: Ledger,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("memory", "sqlite", "postgres"):
        monkeypatch.setattr(f"openhqm.flow.{module}.PRUNE_EVERY", 1)  # prune before every decision
    paced, pool = rate(0.1, 1), slots(1)
    assert (await acquire(ledger, paced, "a")).admitted and (await acquire(ledger, pool, "a")).admitted
    assert not (await acquire(ledger, paced, "b")).admitted
    assert not (await acquire(ledger, pool, "b")).admitted


def tenant(key: str, max_concurrency: int = 1) -> Bucket:
    return Bucket(f"tenant={key}", "tenant", None, 1, max_concurrency)


async def test_a_snapshot_counts_each_limits_waiting_running_and_keys_across_ledgers(
        make_ledger: tuple[LedgerFactory, bool]) -> None:
    factory, _ = make_ledger
    worker, reader = await factory(), await factory()  # two processes when the store is shared
    for holder, key in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")):
        await acquire(worker, tenant(key), holder)
    assert (await acquire(worker, slots(2), "p1")).admitted
    tenants, pool, unused = await reader.snapshot(["tenant", "pool", "unused"])
    assert (tenants.limit, tenants.waiting, tenants.in_flight, tenants.keys) == ("tenant", 2, 2, 2)
    assert [(k.key, k.waiting, k.in_flight) for k in tenants.top_keys] == [("a", 2, 1), ("b", 0, 1)]
    assert tenants.reserved_until is None  # a concurrency limit reserves nothing
    assert (pool.waiting, pool.in_flight, pool.keys, pool.top_keys) == (0, 1, 1, ())  # no key: no top keys
    assert unused == LimitState("unused")  # nothing recorded: all zero


async def test_a_snapshot_drops_a_released_slot_and_an_admitted_waiter(ledger: Ledger) -> None:
    assert (await acquire(ledger, tenant("a"), "first")).admitted
    assert not (await acquire(ledger, tenant("a"), "second")).admitted
    await ledger.release([tenant("a")], "first")
    assert (await acquire(ledger, tenant("a"), "second")).admitted
    [state] = await ledger.snapshot(["tenant"])
    assert (state.waiting, state.in_flight, state.keys) == (0, 1, 1)
    assert [(k.key, k.waiting, k.in_flight) for k in state.top_keys] == [("a", 0, 1)]
    await ledger.release([tenant("a")], "second")
    [state] = await ledger.snapshot(["tenant"])
    assert (state.waiting, state.in_flight, state.keys, state.top_keys) == (0, 0, 0, ())


async def test_a_snapshot_tells_until_when_rate_reservations_run(ledger: Ledger) -> None:
    bucket = rate(0.5, 1)  # each token 2 s apart
    assert (await acquire(ledger, bucket, "ran")).admitted
    waited = await acquire(ledger, bucket, "waits")
    assert waited.ticket_at is not None
    [state] = await ledger.snapshot(["api"])
    assert (state.waiting, state.in_flight, state.keys) == (1, 0, 1)
    # the bucket is booked up to one interval past the last reservation
    assert state.reserved_until == pytest.approx(waited.ticket_at + 2.0, abs=0.01)


async def test_a_snapshot_names_the_ten_busiest_keys_most_waiting_first(ledger: Ledger) -> None:
    for n in range(12):  # twelve keys running one request each ...
        assert (await acquire(ledger, tenant(f"k{n:02}"), f"run{n}")).admitted
    for n, waiting in ((3, 2), (7, 1)):  # ... two of them with requests waiting
        for w in range(waiting):
            assert not (await acquire(ledger, tenant(f"k{n:02}"), f"wait{n}.{w}")).admitted
    [state] = await ledger.snapshot(["tenant"])
    assert (state.waiting, state.in_flight, state.keys) == (3, 12, 12)
    assert [(k.key, k.waiting) for k in state.top_keys][:3] == [("k03", 2), ("k07", 1), ("k00", 0)]
    assert len(state.top_keys) == 10


async def test_a_request_under_two_limits_shows_waiting_only_on_the_one_that_held_it(ledger: Ledger) -> None:
    both = [tenant("a"), rate(0.1, 100)]
    assert (await ledger.acquire(both, "a", ticket=False, concurrency_delay_s=0.1, ttl_s=TTL_S)).admitted
    assert not (await ledger.acquire(both, "b", ticket=False, concurrency_delay_s=0.1, ttl_s=TTL_S)).admitted
    tenants, api = await ledger.snapshot(["tenant", "api"])
    assert (tenants.waiting, tenants.in_flight, api.waiting, api.in_flight) == (1, 1, 0, 0)
    assert api.reserved_until is not None  # its one token is taken: the bucket is booked 10 s ahead
