"""The listener's list of flow limits: every configured one with its target (the endpoints' own
included), and key values from a masked header shown only as their hash."""

from __future__ import annotations

import hashlib

from openhqm.config import load_settings
from openhqm.flow.ledger import KeyLoad, LimitState
from openhqm.listener.flow import covered_limits

URL = "http://127.0.0.1:9/"


def test_every_limit_is_listed_by_name_with_what_it_covers() -> None:
    settings = load_settings(None, {
        "proxy": {"enabled": True, "endpoints": {"orders": {"url": URL, "rate_limit_per_s": 20}}},
        "flow": {"limits": {"per-token": {"endpoint": "orders", "key": "header.Authorization", "max_concurrency": 2},
                            "reports": {"handler": "build", "rate_per_s": 0.5}}}})
    listed = [(c.limit.name, c.endpoint, c.handler) for c in covered_limits(settings)]
    assert listed == [("endpoint.orders", "orders", None), ("per-token", "orders", None), ("reports", None, "build")]


def test_a_key_from_a_masked_header_is_shown_as_its_hash_and_burst_only_with_a_rate() -> None:
    settings = load_settings(None, {
        "proxy": {"enabled": True, "endpoints": {"orders": {"url": URL}}},
        "flow": {"limits": {"per-token": {"endpoint": "orders", "key": "header.Authorization", "max_concurrency": 2}}}})
    [covered] = covered_limits(settings)
    shown = covered.json(LimitState("per-token", waiting=1, in_flight=2, keys=1,
                                    top_keys=(KeyLoad("Bearer s3cret", 1, 2),)))
    digest = hashlib.sha256(b"Bearer s3cret").hexdigest()[:32]
    assert shown["top_keys"] == [{"key": f"sha256:{digest}", "waiting": 1, "in_flight": 2}]
    assert (shown["burst"], shown["rate_per_s"], shown["reserved_until"]) == (None, None, None)
