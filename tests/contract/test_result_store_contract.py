"""The result-store contract, run against every store target in `store_targets/`."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest

from openhqm.constants import Status
from openhqm.errors import AlreadyExists
from openhqm.results import DeadLetterRecord, ResultStore
from openhqm.results.base import CallbackAttempt, Progress
from openhqm.results.records import FanoutChild
from tests.contract.stores import StoreFactory
from tests.records import new_record, waiting_for


async def test_created_record_is_read_back(store: ResultStore) -> None:
    record = new_record(session_id="s1")
    await store.create(record)
    got = await store.get(record.correlation_id)
    assert got is not None and got.status == Status.PENDING and got.session_id == "s1"
    assert await store.get("nope") is None


async def test_terminal_record_never_changes_again(store: ResultStore) -> None:
    record = new_record()
    await store.create(record)
    done = await store.transition(record.correlation_id, Status.COMPLETED, result={"ok": 1}, attempts=1)
    assert done is not None and done.completed_at is not None
    assert await store.transition(record.correlation_id, Status.FAILED, error="late") is None
    got = await store.get(record.correlation_id)
    assert got is not None and got.status == Status.COMPLETED and got.result == {"ok": 1}


async def test_transition_respects_allowed_from(store: ResultStore) -> None:
    record = new_record()
    await store.create(record)
    assert await store.transition(record.correlation_id, Status.CANCELLED,
                                  allowed_from=[Status.PROCESSING]) is None
    assert await store.transition(record.correlation_id, Status.CANCELLED,
                                  allowed_from=[Status.PENDING]) is not None


async def test_waiter_is_woken_when_the_record_becomes_terminal(store: ResultStore) -> None:
    record = new_record()
    await store.create(record)
    waiter = await waiting_for(store, record.correlation_id)
    assert not waiter.done()
    await store.transition(record.correlation_id, Status.COMPLETED, result="r")
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.status == Status.COMPLETED


async def test_waiter_on_another_store_instance_is_woken(make_store: StoreFactory) -> None:
    first, second = await make_store(), await make_store()
    record = new_record()
    await first.create(record)
    waiter = await waiting_for(second, record.correlation_id)
    await first.transition(record.correlation_id, Status.FAILED, error="boom")
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.status == Status.FAILED


async def test_creating_an_existing_id_raises_already_exists_and_keeps_the_first(store: ResultStore) -> None:
    record = new_record(client_id="first")
    await store.create(record)
    with pytest.raises(AlreadyExists):
        await store.create(msgspec.structs.replace(record, client_id="second"))
    first = await store.get(record.correlation_id)
    assert first is not None and first.client_id == record.client_id


async def test_wait_returns_the_pending_record_after_its_timeout(store: ResultStore) -> None:
    record = new_record()
    await store.create(record)
    got = await store.wait(record.correlation_id, timeout_s=0.2)
    assert got is not None and got.status == Status.PENDING
    assert await store.wait("unknown", timeout_s=0.1) is None


async def test_cleanup_removes_exactly_the_old_terminal_records(store: ResultStore) -> None:
    old, fresh, pending = new_record(), new_record(), new_record()
    for r in (old, fresh, pending):
        await store.create(r)
    await store.transition(old.correlation_id, Status.COMPLETED, completed_at=time.time() - 100)
    await store.transition(fresh.correlation_id, Status.COMPLETED)
    assert await store.cleanup(older_than=time.time() - 50) == 1
    assert await store.get(old.correlation_id) is None
    assert await store.get(fresh.correlation_id) is not None
    assert await store.get(pending.correlation_id) is not None


async def test_session_lists_its_requests_in_submit_order(store: ResultStore) -> None:
    session = uuid.uuid4().hex
    ids = []
    for i in range(3):
        r = new_record(session_id=session, submitted_at=1000.0 + i)
        ids.append(r.correlation_id)
        await store.create(r)
    assert [r.correlation_id for r in await store.list_session(session)] == ids


async def test_counts_group_by_status(store: ResultStore) -> None:
    before = await store.counts()
    r = new_record()
    await store.create(r)
    after = await store.counts()
    assert after.get("PENDING", 0) == before.get("PENDING", 0) + 1


async def test_dead_letters_are_listed_taken_and_purged(store: ResultStore) -> None:
    await store.purge_dead_letters()
    for i in range(2):
        await store.add_dead_letter(DeadLetterRecord(
            id=f"d{i}", correlation_id=f"c{i}", queue="q", reason="handler failed", attempts=3,
            last_error="ValueError: x", dead_lettered_at=time.time() + i, body=b"\x00\x01",
            target="api", status_code=503, traceback="Traceback (most recent call last):\nValueError: x\n",
            detail="failed after 3 attempt(s)"))
    listed = await store.list_dead_letters()
    assert [d.id for d in listed] == ["d0", "d1"]
    taken = await store.take_dead_letter("d0")
    assert taken is not None and taken.body == b"\x00\x01"
    assert (taken.target, taken.status_code, taken.traceback, taken.detail) == (
        "api", 503, "Traceback (most recent call last):\nValueError: x\n", "failed after 3 attempt(s)")
    assert await store.take_dead_letter("d0") is None
    assert await store.purge_dead_letters() == 1


async def test_unfinished_requests_submitted_before_a_time_are_listed_oldest_first(store: ResultStore) -> None:
    first, second, finished, recent = (new_record(submitted_at=1000.0), new_record(submitted_at=1001.0),
                                       new_record(submitted_at=1000.5), new_record())
    for r in (second, first, finished, recent):
        await store.create(r)
    await store.transition(second.correlation_id, Status.PROCESSING)
    await store.transition(finished.correlation_id, Status.COMPLETED)
    mine = {r.correlation_id for r in (first, second, finished, recent)}
    listed = [r for r in await store.unfinished_submitted_before(2000.0, limit=1000) if r.correlation_id in mine]
    assert [(r.correlation_id, r.status) for r in listed] == [
        (first.correlation_id, "PENDING"), (second.correlation_id, "PROCESSING")]


async def test_health_is_ok(store: ResultStore) -> None:
    assert (await store.health()).ok


async def test_cleanup_by_status_removes_only_those_states(store: ResultStore) -> None:
    failed, completed = new_record(), new_record()
    for r in (failed, completed):
        await store.create(r)
    old = time.time() - 100
    await store.transition(failed.correlation_id, Status.FAILED, completed_at=old)
    await store.transition(completed.correlation_id, Status.COMPLETED, completed_at=old)
    assert await store.cleanup(older_than=time.time(), statuses=[]) == 0
    assert await store.cleanup(older_than=time.time(), statuses=["COMPLETED"]) == 1
    assert await store.get(completed.correlation_id) is None
    assert await store.get(failed.correlation_id) is not None


async def test_concurrent_transitions_from_two_stores_apply_exactly_once(make_store: StoreFactory) -> None:
    first, second = await make_store(), await make_store()
    records = [new_record() for _ in range(20)]
    for record in records:
        await first.create(record)
    attempts = [store.transition(r.correlation_id, Status.PROCESSING, allowed_from=[Status.PENDING],
                                 attempts=n)
                for r in records for n, store in enumerate((first, second, first, second))]
    results = await asyncio.gather(*attempts)
    assert sum(result is not None for result in results) == len(records)
    assert await first.counts() == {"PROCESSING": len(records)}
    finals = await asyncio.gather(*(second.transition(r.correlation_id, Status.COMPLETED) for r in records))
    assert all(final is not None and final.status == Status.COMPLETED for final in finals)
    assert await first.counts() == {"COMPLETED": len(records)}


async def test_amend_changes_a_finished_record_without_a_transition(make_store: StoreFactory) -> None:
    store = await make_store()
    seen: list[str] = []
    store.add_listener(lambda record: seen.append(record.status))
    record = new_record()
    await store.create(record)
    await store.transition(record.correlation_id, Status.COMPLETED, result={"ok": 1})
    tries = [CallbackAttempt(attempt=1, at=time.time(), status_code=400, error="receiver said 400")]
    amended = await store.amend(record.correlation_id, Status.COMPLETED, callback_error="receiver said 400",
                                callbacks=tries)
    assert amended is not None and amended.callback_error == "receiver said 400" and amended.callbacks == tries
    assert seen == [Status.COMPLETED]  # a lifecycle hook sees the completion once
    assert await store.amend(record.correlation_id, Status.PENDING, callback_error="stale") is None
    again = await (await make_store()).get(record.correlation_id)
    assert again is not None and again.callback_error == "receiver said 400" and again.result == {"ok": 1}
    assert again.callbacks == tries


async def test_what_a_request_waits_on_is_kept_and_cleared_when_it_runs(make_store: StoreFactory) -> None:
    store = await make_store()
    record = msgspec.structs.replace(new_record(), status=Status.SCHEDULED, waiting_on="schedule",
                                     next_attempt_at=time.time() + 60)
    await store.create(record)
    reader = await make_store()
    got = await reader.get(record.correlation_id)
    assert got is not None and (got.waiting_on, got.next_attempt_at) == ("schedule", record.next_attempt_at)
    await store.transition(record.correlation_id, Status.RETRY, waiting_on="retry", next_attempt_at=123.5)
    got = await reader.get(record.correlation_id)
    assert got is not None and (got.waiting_on, got.next_attempt_at) == ("retry", 123.5)
    await store.transition(record.correlation_id, Status.PROCESSING)
    got = await reader.get(record.correlation_id)
    assert got is not None and (got.waiting_on, got.next_attempt_at) == (None, None)


async def test_progress_of_a_running_record_is_stored_and_read_back_typed(store: ResultStore) -> None:
    record = new_record()
    await store.create(record)
    await store.transition(record.correlation_id, Status.PROCESSING)
    updates = store.subscribe(record.correlation_id)
    progress = Progress(fraction=0.5, message="halfway", updated_at=time.time())
    amended = await store.amend(record.correlation_id, Status.PROCESSING, progress=progress)
    assert amended is not None and amended.progress == progress
    assert (await asyncio.wait_for(updates.get(), 5)).progress == progress, "readers of updates see it"
    got = await store.get(record.correlation_id)
    assert got is not None and got.status == Status.PROCESSING and got.progress == progress


async def test_a_running_record_cancelled_refuses_its_late_result_and_progress(make_store: StoreFactory) -> None:
    listener, worker = await make_store(), await make_store()
    record = new_record()
    await listener.create(record)
    await worker.transition(record.correlation_id, Status.PROCESSING)
    with worker.waiting(record.correlation_id) as finished:  # how a worker watches its job
        cancelled = await listener.transition(record.correlation_id, Status.CANCELLED,
                                              allowed_from=[Status.PROCESSING])
        assert cancelled is not None
        woken = await asyncio.wait_for(finished, 10)
    assert woken is None or woken.status == Status.CANCELLED
    assert await worker.transition(record.correlation_id, Status.COMPLETED, result="late") is None
    progress = Progress(fraction=1.0, updated_at=time.time())
    assert await worker.amend(record.correlation_id, Status.PROCESSING, progress=progress) is None
    got = await listener.get(record.correlation_id)
    assert got is not None and got.status == Status.CANCELLED and got.result is None


async def test_racing_creates_of_one_id_from_two_stores_let_exactly_one_win(make_store: StoreFactory) -> None:
    """What makes a schedule's tick one request however many listeners fire it (listener/scheduler.py)."""
    first, second = await make_store(), await make_store()
    ticks = [new_record() for _ in range(20)]
    outcomes = await asyncio.gather(*(store.create(r) for r in ticks for store in (first, second, first)),
                                    return_exceptions=True)
    assert sum(outcome is None for outcome in outcomes) == len(ticks)
    assert all(isinstance(o, AlreadyExists) for o in outcomes if o is not None)


async def test_schedules_are_stored_replaced_and_forgotten_across_instances(make_store: StoreFactory) -> None:
    first, second = await make_store(), await make_store()
    assert await second.schedules() == {}
    await first.put_schedule("nightly", b'{"paused": false}')
    await first.put_schedule("hourly", b"{}")
    await second.put_schedule("nightly", b'{"paused": true}')
    assert await first.schedules() == {"nightly": b'{"paused": true}', "hourly": b"{}"}
    await second.put_schedule("hourly", None)
    await second.put_schedule("never-stored", None)
    assert await first.schedules() == {"nightly": b'{"paused": true}'}


async def test_fanout_links_are_stored_and_read_back_typed(make_store: StoreFactory) -> None:
    store, reader = await make_store(), await make_store()
    parent = new_record()
    child = msgspec.structs.replace(new_record(), parent_id=parent.correlation_id, member="endpoint:a")
    parent = msgspec.structs.replace(parent, status=Status.PROCESSING, children=[
        FanoutChild(member="endpoint:a", correlation_id=child.correlation_id)])
    await store.create(parent)
    await store.create(child)
    got_parent, got_child = await reader.get(parent.correlation_id), await reader.get(child.correlation_id)
    assert got_parent is not None and got_parent.children == parent.children
    assert got_child is not None and (got_child.parent_id, got_child.member) == (parent.correlation_id, "endpoint:a")
    replaced = [FanoutChild(member="endpoint:a", correlation_id="replayed")]
    amended = await store.amend(parent.correlation_id, Status.PROCESSING, children=replaced)
    assert amended is not None and amended.children == replaced
    got_parent = await reader.get(parent.correlation_id)
    assert got_parent is not None and got_parent.children == replaced


async def test_a_finished_record_reopened_by_an_explicit_allowed_from_finishes_again(
        make_store: StoreFactory) -> None:
    """A fan-out parent whose failed child is replayed: FAILED -> PROCESSING -> COMPLETED, its
    waiters woken by the second end, and never cleaned up while it is open again."""
    store, other = await make_store(), await make_store()
    record = new_record()
    await store.create(record)
    await store.transition(record.correlation_id, Status.FAILED, error="a member failed")
    reopened = await other.transition(record.correlation_id, Status.PROCESSING,
                                      allowed_from=[Status.COMPLETED, Status.FAILED],
                                      result=None, error=None, completed_at=None)
    assert reopened is not None and reopened.status == Status.PROCESSING and reopened.completed_at is None
    assert await store.counts() == {"PROCESSING": 1}
    assert await store.cleanup(time.time() + 3600) == 0
    with store.waiting(record.correlation_id) as finished:
        done = await other.transition(record.correlation_id, Status.COMPLETED, result={"members": {}})
        assert done is not None
        woken = await store.until_terminal(record.correlation_id, finished, reopened, 10)
    assert woken is not None and woken.status == Status.COMPLETED and woken.result == {"members": {}}
    assert await store.counts() == {"COMPLETED": 1}
