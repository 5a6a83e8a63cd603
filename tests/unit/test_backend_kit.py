"""The parts every broker file shares: wire headers, error mapping, admission, prefetch, options."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from openhqm.backends.base import Backend, BackendOptions, Delivery
from openhqm.backends.kit import (
    Admit,
    Background,
    Closing,
    ErrorMap,
    PrefetchBuffer,
    Wire,
    admission,
    connected,
    redelivery,
    reraise_swallowed_cancel,
    within_limit,
)
from openhqm.config import load_settings
from openhqm.errors import AlreadySettled, BackendError, BackendUnavailable, ConfigError, NotFound
from openhqm.policies import Backoff, Reconnect, RetryPolicy
from openhqm.redact import SECRET_MASK


def test_a_message_without_a_not_before_time_is_delivered_at_once() -> None:
    assert admission(None, 100.0, max_hold_s=10).action is Admit.DELIVER
    assert admission(99.0, 100.0, max_hold_s=10).action is Admit.DELIVER


def test_a_message_due_within_the_hold_limit_is_held_for_the_remaining_time() -> None:
    decision = admission(105.0, 100.0, max_hold_s=10)
    assert decision.action is Admit.HOLD and decision.wait_s == pytest.approx(5.0)


def test_a_message_due_beyond_the_hold_limit_is_reposted() -> None:
    decision = admission(1100.0, 100.0, max_hold_s=900)
    assert decision.action is Admit.REPOST and decision.wait_s == pytest.approx(1000.0)


def test_without_a_hold_limit_every_future_message_is_held() -> None:
    assert admission(10_000.0, 100.0, max_hold_s=None).action is Admit.HOLD


def test_a_redelivery_counts_the_next_attempt_and_carries_its_due_time_in_seconds() -> None:
    assert redelivery(2, 1.5, now=100.0) == {Wire.ATTEMPT: "3", Wire.NOT_BEFORE: "101.5"}
    assert redelivery(1, None, now=100.0) == {Wire.ATTEMPT: "2"}


def test_a_first_publish_carries_its_id_key_and_due_time_and_a_new_id_when_none_is_given() -> None:
    assert Wire.published("m1", 2.5, now=100.0, key="k") == {
        Wire.ID: "m1", Wire.KEY: "k", Wire.NOT_BEFORE: "102.5"}
    assert Wire.published("m1", 0, now=100.0) == {Wire.ID: "m1"}
    generated = Wire.published(None, None, now=100.0)
    assert list(generated) == [Wire.ID] and generated[Wire.ID]


def test_a_retry_copy_keeps_foreign_headers_and_replaces_the_attempt_and_the_spent_due_time() -> None:
    original = {Wire.ID: "m1", "Openhqm-Not-Before": "50", Wire.ATTEMPT: "2", "trace": "t"}
    assert Wire.retried(original, 2, None, now=100.0) == {Wire.ID: "m1", "trace": "t", Wire.ATTEMPT: "3"}
    assert Wire.retried(original, 2, 5.0, now=100.0)[Wire.NOT_BEFORE] == "105.0"


def test_a_dead_letter_copy_carries_the_reason_and_starts_over_at_attempt_one_due_now() -> None:
    original = {Wire.ID: "m1", Wire.KEY: "k", Wire.NOT_BEFORE: "50", Wire.ATTEMPT: "4", Wire.REASON: "old"}
    assert Wire.dead_lettered(original, "boom\nagain") == {Wire.ID: "m1", Wire.KEY: "k", Wire.REASON: "boom again"}


def test_wire_numbers_are_read_from_bytes_strings_and_numbers_and_garbage_is_none() -> None:
    assert Wire.number(b"12.5") == 12.5 and Wire.number("3") == 3.0 and Wire.number(4) == 4.0
    assert Wire.number(None) is None and Wire.number("soon") is None and Wire.number("nan") is None
    assert Wire.attempt(b"3") == 3 and Wire.attempt(None) == 1 and Wire.attempt("0") == 1


def test_a_dead_letter_reason_fits_in_one_bounded_header_line() -> None:
    assert Wire.reason("line one\r\nline two") == "line one line two"
    assert len(Wire.reason("x" * 5000)) == 1000 and Wire.reason("") == "-"


errors = ErrorMap("testbroker", [(ConnectionError, BackendUnavailable), (ValueError, BackendError)])


def test_driver_errors_map_to_the_first_matching_rule_with_the_password_masked() -> None:
    with pytest.raises(BackendUnavailable, match=r"testbroker: publish: redis://u:\*+@h") as caught, \
            errors("publish"):
        raise ConnectionRefusedError("redis://u:hunter2@h refused")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    with pytest.raises(BackendError, match="testbroker: ack: bad"), errors("ack"):
        raise ValueError("bad")


def test_timeouts_are_unavailable_and_openhqm_errors_pass_through_unchanged() -> None:
    with pytest.raises(BackendUnavailable, match="no answer in time"), errors("consume"):
        raise TimeoutError
    original = NotFound("gone")
    with pytest.raises(NotFound) as caught, errors("get"):
        raise original
    assert caught.value is original


def test_unmapped_errors_propagate_as_they_are() -> None:
    with pytest.raises(KeyError), errors("x"):
        raise KeyError("programming error")


def test_an_error_kept_for_later_is_always_an_openhqm_error_unmapped_ones_a_backend_error() -> None:
    assert type(errors.error("poll", ConnectionError("down"))) is BackendUnavailable
    unmapped = errors.error("poll", KeyError("surprise"))
    assert type(unmapped) is BackendError and str(unmapped) == "testbroker: poll: 'surprise'"


def test_headers_are_found_in_any_case_and_a_copy_keeps_all_but_the_dropped_ones() -> None:
    headers = {"Openhqm-Id": "m1", "openhqm-not-before": "12.5", "X-Trace": "t"}
    assert Wire.get(headers, Wire.ID) == "m1" and Wire.get(None, Wire.ID) is None
    assert Wire.carried(headers, Wire.ID, Wire.NOT_BEFORE) == {"X-Trace": "t"}


async def test_prefetched_items_not_taken_are_released_on_close() -> None:
    released: list[int] = []

    async def release(item: int) -> None:
        released.append(item)

    buffer: PrefetchBuffer[int] = PrefetchBuffer(4, release)
    for item in (1, 2, 3):
        await buffer.put(item)
    assert await buffer.get() == 1
    await buffer.close()
    assert released == [2, 3]
    assert await buffer.get() is None
    await buffer.put(4)  # after close: straight back to the broker
    assert released == [2, 3, 4]


async def test_a_consumer_waiting_on_an_empty_buffer_wakes_on_close() -> None:
    buffer: PrefetchBuffer[int] = PrefetchBuffer(1, lambda item: asyncio.sleep(0))
    waiting = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)
    await buffer.close()
    assert await asyncio.wait_for(waiting, 5) is None


async def test_a_get_cancelled_after_taking_an_item_keeps_it_first_even_when_the_buffer_refilled() -> None:
    """The item a cancelled get() took is not lost, nor does it overflow a buffer refilled meanwhile."""
    released: list[int] = []

    async def release(item: int) -> None:
        released.append(item)

    buffer: PrefetchBuffer[int] = PrefetchBuffer(1, release)
    getting = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)  # waiting on the empty buffer
    await buffer.put(1)
    await asyncio.sleep(0)  # its inner getter takes 1; the get itself has not resumed yet
    await buffer.put(2)  # the slot 1 left is filled again
    getting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getting
    assert len(buffer) == 2 and buffer.free == 0
    assert [await buffer.get(), await buffer.get()] == [1, 2]
    await buffer.put(3)
    await buffer.close()
    assert released == [3]


async def test_after_a_swallowed_cancel_each_item_is_handed_out_once() -> None:
    """A library that catches a task's CancelledError leaves `Task.cancelling()` up; the buffer must
    not then keep every item it hands out (a NATS consumer once looped on one status message)."""
    buffer: PrefetchBuffer[int] = PrefetchBuffer(4, lambda item: asyncio.sleep(0))
    taken: list[int | None] = []
    started = asyncio.Event()

    async def consumer() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as nats-py's publish does
            await asyncio.sleep(3600)
        for _ in range(3):
            taken.append(await buffer.get())

    task = asyncio.create_task(consumer())
    await started.wait()
    task.cancel()
    for item in (1, 2, 3):
        await buffer.put(item)
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    assert taken == [1, 2, 3] and len(buffer) == 0


async def test_a_swallowed_cancel_is_raised_again() -> None:
    async def swallows_then_checks() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        reraise_swallowed_cancel()

    task = asyncio.create_task(swallows_then_checks())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_backoff_grows_exponentially_within_its_cap_and_retry_after_wins_capped() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=8.0, jitter=False)
    assert [backoff.delay_s(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.delay_s(1, retry_after_s=3600) == 8.0
    jittered = Backoff(base_delay_s=1.0, max_delay_s=8.0)
    assert all(2.0 <= jittered.delay_s(3) <= 4.0 for _ in range(100))


def test_retry_policy_gives_up_after_max_attempts_or_max_age() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=Backoff(jitter=False), max_age_s=10.0)
    assert policy.next_delay_s(1) == 1.0
    assert policy.next_delay_s(3) is None
    assert policy.next_delay_s(1, age_s=9.5) is None


async def test_reconnect_waits_longer_after_each_failure_and_resets_after_success() -> None:
    reconnect = Reconnect(Backoff(base_delay_s=0.001, max_delay_s=0.004, jitter=False))
    await reconnect.wait()
    await reconnect.wait()
    assert reconnect.next_delay_s == 0.004
    reconnect.reset()
    assert reconnect.next_delay_s == 0.001


class _Options(BackendOptions):
    region: str = "eu"
    limit: int = 3


class _Pingless(Backend):
    name = "pingless"
    options_model = _Options

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, queue: str, body: bytes, **_: object) -> None: ...  # type: ignore[override]
    def consume(self, queue: str, *, prefetch: int = 1):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    async def depth(self, queue: str) -> int:
        return 0


PINGLESS = f"{__name__}:_Pingless"


async def test_backend_health_is_a_template_over_ping_that_never_raises() -> None:
    backend = _Pingless(load_settings(overrides={"queue": {"type": PINGLESS}}))
    health = await backend.health()
    assert not health.ok and "implements neither ping() nor health()" in health.detail


def test_backend_options_come_from_their_queue_section_with_defaults() -> None:
    settings = load_settings(overrides={"queue": {"type": PINGLESS, "pingless": {"limit": 7}}})
    assert _Pingless(settings).options == _Options(region="eu", limit=7)
    assert _Pingless(load_settings(overrides={"queue": {"type": PINGLESS}})).options == _Options()
    with pytest.raises(ConfigError, match=r"setting 'queue.pingless.limit' \(got 'many'\)"):
        load_settings(overrides={"queue": {"type": PINGLESS, "pingless": {"limit": "many"}}})


@pytest.mark.parametrize(("name", "shown"), [("nats", f"nats://u:{SECRET_MASK}@h:4222"), ("mqtt", f"mqtt://u:{SECRET_MASK}@h:1883"),
                                             ("rabbitmq", f"amqp://u:{SECRET_MASK}@h/"), ("memory", "memory")])
def test_a_backend_is_shown_by_its_url_option_without_the_password(name: str, shown: str) -> None:
    from openhqm.backends import create_backend

    url = {"nats": "nats://u:pw@h:4222", "mqtt": "mqtt://u:pw@h:1883", "rabbitmq": "amqp://u:pw@h/"}.get(name)
    section = {name: {"url": url}} if url else {}
    backend = create_backend(load_settings(overrides={"queue": {"type": name, **section}}))
    assert backend.display_url == shown


def test_a_backend_section_with_a_typo_names_the_key_and_suggests_the_backend() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'queue.redsi'.*did you mean 'redis'"):
        load_settings(overrides={"queue": {"redsi": {"url": "redis://h"}}})
    problems = r"setting 'queue.redis.lease_s' \(got -1\).*unknown setting 'queue.redis.urll'"
    with pytest.raises(ConfigError, match=problems):
        load_settings(overrides={"queue": {"redis": {"lease_s": -1, "urll": "redis://h"}}})


def test_a_backend_section_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENHQM_QUEUE__REDIS__LEASE_S", "5")
    assert load_settings().queue.redis.lease_s == 5.0
    monkeypatch.setenv("OPENHQM_QUEUE__REDSI__LEASE_S", "5")
    with pytest.raises(ConfigError, match="did you mean OPENHQM_QUEUE__REDIS"):
        load_settings()


async def test_a_consumer_cancelled_as_an_item_arrives_leaves_the_item_in_the_buffer() -> None:
    buffer: PrefetchBuffer[int] = PrefetchBuffer(2, lambda item: asyncio.sleep(0))
    waiting = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)
    await buffer.put(7)  # wakes the getter's inner get; cancel before it is handed out
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await buffer.get() == 7


@pytest.mark.parametrize("name", ["memory", "sqlite", "redis", "sqs", "nats"])
def test_backends_that_extend_leases_tell_the_pool_how_long_a_lease_lasts(name: str, tmp_path: object) -> None:
    from openhqm.backends import create_backend

    backend = create_backend(load_settings(overrides={"queue": {"type": name}, "data_dir": str(tmp_path)}))
    assert backend.capabilities.lease_extension and backend.lease_s is not None and backend.lease_s > 0


async def test_background_tasks_are_held_until_done_and_waited_for_whatever_their_end() -> None:
    background, release = Background(), asyncio.Event()
    finished: list[str] = []

    async def side_task() -> None:
        await release.wait()
        finished.append("side task")

    async def failing() -> None:
        raise RuntimeError("its own business")

    background.spawn(side_task())
    background.spawn(failing())
    assert len(background) == 2
    release.set()
    await background.wait()
    assert finished == ["side task"] and len(background) == 0


async def test_close_abandons_a_call_in_progress_and_returns_once_it_has_ended() -> None:
    closing, started, ended = Closing(), asyncio.Event(), asyncio.Event()

    async def long_poll() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()
        return "never"

    polling = asyncio.create_task(closing.unless_closed(long_poll()))
    await started.wait()
    await closing.close()
    assert ended.is_set() and await polling is None
    assert await closing.unless_closed(long_poll()) is None  # once closed, nothing waits


async def test_a_call_made_through_closing_returns_its_result_or_raises_its_error() -> None:
    closing = Closing()

    async def answer() -> int:
        return 42

    async def broken() -> int:
        raise ConnectionError("down")

    assert await closing.unless_closed(answer()) == 42
    with pytest.raises(ConnectionError):
        await closing.unless_closed(broken())


class _Recorded(Delivery):
    """A delivery that records how it was settled; `fail` makes its settles raise BackendUnavailable."""

    def __init__(self, *, fail: bool = False, lease_until: float | None = None) -> None:
        super().__init__("q", b"", attempt=1, message_id="m1")
        self.fail, self.lease_until, self.calls = fail, lease_until, list[str]()

    async def _ack(self) -> None:
        self.calls.append("ack")

    async def _nack(self, delay_s: float | None) -> None:
        self.calls.append("nack")

    async def _dead_letter(self, reason: str) -> None:
        if self.fail:
            raise BackendUnavailable("down")
        self.calls.append(f"dead_letter: {reason}")


async def test_a_delivery_past_the_brokers_delivery_limit_is_dead_lettered_with_the_limit_named() -> None:
    within = _Recorded()
    assert await within_limit(within, 2, 2, "queue.x.max is 2") is within and within.calls == []
    assert await within_limit(within, None, 2, "queue.x.max is 2") is within
    past = _Recorded()
    assert await within_limit(past, 3, 2, "queue.x.max is 2") is None
    assert past.calls == ["dead_letter: delivered 3 times; queue.x.max is 2"]
    assert await within_limit(_Recorded(fail=True), 3, 2, "queue.x.max is 2") is None  # logged; it comes back


async def test_a_settle_after_the_lease_ended_changes_nothing_but_still_counts_as_the_one_settle() -> None:
    late = _Recorded(lease_until=time.monotonic() - 1)
    await late.ack()
    assert late.calls == [] and late.settled == "ack"
    with pytest.raises(AlreadySettled):
        await late.nack()
    timely = _Recorded(lease_until=time.monotonic() + 60)
    await timely.nack()
    assert timely.calls == ["nack"]


def test_a_part_of_a_connection_that_is_not_there_is_backend_unavailable() -> None:
    client = object()
    assert connected("testbroker", client) is client
    with pytest.raises(BackendUnavailable, match="testbroker backend is not connected"):
        connected("testbroker", None)
