"""Flow limits without I/O: which bucket a request counts against, and configuration errors that
name the key."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from openhqm.app import OpenHQM
from openhqm.config import load_settings
from openhqm.envelope import Envelope
from openhqm.errors import ConfigError
from openhqm.flow.ledger import BucketState, decide
from openhqm.flow.limiter import build_limiter, slot_wait_s
from openhqm.flow.limits import Bucket, FlowLimitSettings, FlowSettings, Limit, configured_limits, key_value
from openhqm.forward.settings import EndpointSettings

URL = "http://127.0.0.1:9/"


def envelope(**fields: object) -> Envelope:
    return Envelope(**fields)  # type: ignore[arg-type]


def test_a_key_reads_metadata_headers_and_payload_paths() -> None:
    request = envelope(metadata={"tenant": "acme"}, session_id="s1", headers={"X-Tenant": "h-acme"},
                       body=orjson.dumps({"customer": {"ids": ["c7", "c8"]}, "n": 3}))
    assert key_value("metadata.tenant", request) == "acme"
    assert key_value("metadata.session_id", request) == "s1"  # a metadata key the envelope keeps apart
    assert key_value("header.x-tenant", request) == "h-acme"  # header names are case-insensitive
    assert key_value("payload.customer.ids.1", request) == "c8"
    assert key_value("payload.n", request) == "3"  # a JSON value other than a string, as JSON


def test_a_request_without_the_key_counts_against_the_empty_key_bucket() -> None:
    request = envelope(body=b"not json")
    assert key_value("metadata.tenant", request) == ""
    assert key_value("header.x-tenant", request) == ""
    assert key_value("payload.customer", request) == ""


def test_each_key_value_is_its_own_bucket_and_long_values_are_hashed() -> None:
    limit = Limit("per-tenant", 5.0, 5, None, key="metadata.tenant")
    assert limit.bucket(envelope(metadata={"tenant": "a"})).id == "per-tenant=a"
    assert limit.bucket(envelope(metadata={"tenant": "b"})).id == "per-tenant=b"
    long = limit.bucket(envelope(metadata={"tenant": "x" * 500})).id
    assert long.startswith("per-tenant=sha256:") and len(long) < 80


@pytest.mark.parametrize(("limit", "problem"), [
    ({"endpoint": "api", "handler": "h", "rate_per_s": 1}, "exactly one of endpoint or handler"),
    ({"rate_per_s": 1}, "exactly one of endpoint or handler"),
    ({"handler": "h"}, "needs rate_per_s, max_concurrency, or both"),
    ({"handler": "h", "max_concurrency": 2, "burst": 3}, "burst needs rate_per_s"),
    ({"handler": "h", "rate_per_s": 1, "key": "body.tenant"}, "is not metadata.<field>, header.<name>"),
    ({"handler": "h", "rate_per_s": 1, "key": "payload.a..b"}, "has an empty part"),
    ({"handler": "h", "rate_per_s": 0}, "greater than 0"),
])
def test_an_invalid_limit_is_refused_naming_the_problem(limit: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        FlowLimitSettings.model_validate(limit)


def test_limit_names_are_checked() -> None:
    with pytest.raises(ValidationError, match="limit names must be"):
        FlowSettings.model_validate({"limits": {"Bad.Name": {"handler": "h", "rate_per_s": 1}}})


def test_a_limit_naming_an_unknown_endpoint_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"flow.limits.api-rate.endpoint names no endpoint: 'nope'; valid: api"):
        load_settings(None, {"proxy": {"enabled": True, "endpoints": {"api": {"url": URL}}},
                             "flow": {"limits": {"api-rate": {"endpoint": "nope", "rate_per_s": 5}}}})
    with pytest.raises(ConfigError, match=r"flow\.limits\.api-rate\.burst"):
        load_settings(None, {"flow": {"limits": {"api-rate": {"handler": "echo", "rate_per_s": 5, "burst": 0}}}})


def test_a_limit_naming_an_unregistered_handler_is_a_config_error() -> None:
    settings = load_settings(None, {"flow": {"limits": {"h": {"handler": "missing", "rate_per_s": 5}}}})
    with pytest.raises(ConfigError, match=r"'flow.limits.h.handler' \(got 'missing'\): no such handler"):
        build_limiter(settings, OpenHQM().handlers)


def test_no_limit_configured_means_no_limiter_on_the_worker_path() -> None:
    assert build_limiter(load_settings(None, {}), OpenHQM().handlers) is None
    # an endpoint's default max_concurrency stays a per-process cap, not a shared limit
    proxy = {"enabled": True, "endpoints": {"api": {"url": URL}}}
    assert build_limiter(load_settings(None, {"proxy": proxy}), OpenHQM().handlers) is None


def test_endpoint_rate_and_concurrency_settings_become_implicit_limits() -> None:
    endpoints = {"paced": EndpointSettings(url=URL, rate_limit_per_s=2.5),
                 "narrow": EndpointSettings(url=URL, max_concurrency=4, rate_limit_per_s=10, rate_burst=2),
                 "plain": EndpointSettings(url=URL)}
    by_endpoint, by_handler = configured_limits(FlowSettings(), endpoints)
    assert by_endpoint == {"paced": [Limit("endpoint.paced", 2.5, 3, None)],
                           "narrow": [Limit("endpoint.narrow", 10, 2, 4)]}
    assert by_handler == {}


def test_burst_defaults_to_one_second_of_requests_and_at_least_one() -> None:
    flow = FlowSettings.model_validate({"limits": {"fast": {"handler": "h", "rate_per_s": 20},
                                                   "slow": {"handler": "h", "rate_per_s": 0.1}}})
    _, by_handler = configured_limits(flow, {})
    assert [(limit.name, limit.burst) for limit in by_handler["h"]] == [("fast", 20), ("slow", 1)]


def test_a_waiting_request_reserves_its_token_so_the_next_one_queues_behind_it() -> None:
    bucket, state = Bucket("b", "b", 2.0, 1, None), BucketState()
    assert decide([bucket], [state], 100.0, "r1", ticket=False, concurrency_delay_s=0.1, ttl_s=30).admitted
    second = decide([bucket], [state], 100.0, "r2", ticket=False, concurrency_delay_s=0.1, ttl_s=30)
    third = decide([bucket], [state], 100.0, "r3", ticket=False, concurrency_delay_s=0.1, ttl_s=30)
    assert (second.ticket_at, third.ticket_at) == (100.5, 101.0)
    # a bucket that stayed idle fills up again, no further than its burst
    assert decide([bucket], [state], 200.0, "r4", ticket=False, concurrency_delay_s=0.1, ttl_s=30).admitted
    assert not decide([bucket], [state], 200.0, "r5", ticket=False, concurrency_delay_s=0.1, ttl_s=30).admitted


def test_a_request_waiting_for_a_slot_looks_again_about_as_often_as_slots_free_up() -> None:
    first = [slot_wait_s(0, 1, 0.1) for _ in range(20)]
    later = [slot_wait_s(10, 1, 0.1) for _ in range(20)]
    assert max(first) <= 0.05  # a fresh wait looks again soon
    assert min(later) >= 0.1 and max(later) <= 0.2  # then about twice the time a slot is held


def test_a_long_queue_for_slots_looks_less_often_than_a_short_one() -> None:
    short = [slot_wait_s(10, 3, 0.1) for _ in range(20)]
    long = [slot_wait_s(10, 5000, 0.1) for _ in range(20)]
    assert max(short) <= 0.2
    assert min(long) >= 7.5 and max(long) <= 15.0  # 5,000 waiters: about 3 ms each
    assert max(slot_wait_s(40, 10**6, 0.1) for _ in range(20)) <= 30.0
