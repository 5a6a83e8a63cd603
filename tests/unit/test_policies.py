"""The one retry policy and backoff every retrying loop uses, and the settings that build them."""

from __future__ import annotations

import asyncio

import pytest

from openhqm.config import RetrySettings
from openhqm.forward.settings import CallbackRetrySettings, ForwardRetrySettings
from openhqm.policies import Backoff, Reconnect, RetryPolicy
from openhqm.settings_base import RetrySection


def test_backoff_grows_exponentially_within_half_and_all_of_its_ceiling() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=10.0)
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 10.0), (500, 10.0)):
        assert ceiling / 2 <= backoff.delay_s(attempts) <= ceiling


def test_retry_after_replaces_the_backoff_and_is_capped_by_max_delay() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=10.0)
    assert backoff.delay_s(1, retry_after_s=7.0) == 7.0
    assert backoff.delay_s(5, retry_after_s=0.0) == 0.0
    assert backoff.delay_s(1, retry_after_s=70.0) == 10.0


def test_max_attempts_counts_every_try_the_first_included() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=Backoff(0.1, 1.0))
    assert policy.next_delay_s(1) is not None and policy.next_delay_s(2) is not None
    assert policy.next_delay_s(3) is None
    assert RetryPolicy(max_attempts=1).next_delay_s(1) is None


def test_max_age_stops_retries_that_would_end_past_it() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=Backoff(1.0, 1.0), max_age_s=60)
    assert policy.next_delay_s(1, age_s=10) is not None
    assert policy.next_delay_s(1, age_s=59.5) is None


@pytest.mark.parametrize("section", [RetrySettings(), ForwardRetrySettings(), CallbackRetrySettings()])
def test_every_retry_section_becomes_the_same_policy_value(section: RetrySection) -> None:
    policy = section.policy()
    assert (policy.max_attempts, policy.backoff.base_delay_s, policy.backoff.max_delay_s) == (
        section.max_attempts, section.base_delay_s, section.max_delay_s)


def test_an_endpoints_max_age_reaches_its_policy() -> None:
    assert ForwardRetrySettings(max_age_s=30).policy().max_age_s == 30


async def test_reconnect_sleeps_the_delay_it_announced_and_starts_over_after_a_success() -> None:
    reconnect = Reconnect(Backoff(base_delay_s=0.001, max_delay_s=0.004))
    announced = reconnect.next_delay_s
    assert reconnect.next_delay_s == announced
    assert await reconnect.wait() == announced
    await reconnect.wait()
    assert reconnect.failures == 2
    reconnect.reset()
    assert reconnect.failures == 0 and reconnect.next_delay_s <= 0.001


async def test_a_reconnect_wait_ends_as_soon_as_its_until_event_is_set() -> None:
    reconnect = Reconnect(Backoff(base_delay_s=3600, max_delay_s=3600, jitter=False))
    closed = asyncio.Event()
    waiting = asyncio.create_task(reconnect.wait(closed))
    asyncio.get_running_loop().call_soon(closed.set)
    assert await asyncio.wait_for(waiting, timeout=10) == 3600
    assert reconnect.failures == 1
