"""Forwarder.resolve(): the named endpoint, else the first matching route, else the default."""

from __future__ import annotations

from typing import Any

import pytest

from openhqm.errors import RequestRejected
from openhqm.forward import Forwarder, ProxySettings

URL = "http://backend.internal/"


def make(routes: list[dict[str, Any]], default: str | None = "main") -> Forwarder:
    names = ["main", "orders", "eu", "premium", "flagged"]
    return Forwarder(
        ProxySettings(
            enabled=True, endpoints={n: {"url": URL} for n in names}, routes=routes, default_endpoint=default
        )
    )


ROUTES = [
    {"endpoint": "orders", "path_prefix": "/orders", "method": ["POST", "PUT"]},
    {"endpoint": "premium", "header": {"name": "X-Tier", "value": "premium"}},
    {"endpoint": "eu", "json_field": {"path": "customer.region", "equals": "eu"}},
    {"endpoint": "flagged", "json_field": {"path": "items.0.flags"}},
]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"method": "POST", "path": "/orders"}, "orders"),
        ({"method": "put", "path": "/orders/7"}, "orders"),
        ({"method": "GET", "path": "/orders/7"}, "main"),
        ({"method": "POST", "path": "/ordersX"}, "main"),
        ({"headers": {"x-tier": "premium"}}, "premium"),
        ({"headers": {"X-Tier": "basic"}}, "main"),
        ({"payload_json": {"customer": {"region": "eu"}}}, "eu"),
        ({"payload_json": {"customer": {"region": "us"}}}, "main"),
        ({"payload_json": {"items": [{"flags": None}]}}, "flagged"),
        ({"payload_json": {"items": []}}, "main"),
        ({"payload_json": "not an object"}, "main"),
        ({"method": "POST", "path": "/orders", "headers": {"X-Tier": "premium"}}, "orders"),
    ],
)
def test_first_matching_route_wins_else_the_default(request_: dict[str, Any], expected: str) -> None:
    assert make(ROUTES).resolve(None, **request_) == expected


def test_all_conditions_of_a_rule_must_hold() -> None:
    fwd = make([{"endpoint": "eu", "path_prefix": "/v1", "header": {"name": "X-Region"}}])
    assert fwd.resolve(None, path="/v1/a", headers={"X-Region": "any"}) == "eu"
    assert fwd.resolve(None, path="/v1/a") == "main"


def test_json_equality_does_not_confuse_true_and_1() -> None:
    fwd = make([{"endpoint": "eu", "json_field": {"path": "n", "equals": 1}}])
    assert fwd.resolve(None, payload_json={"n": 1.0}) == "eu"
    assert fwd.resolve(None, payload_json={"n": True}) == "main"


def test_the_named_endpoint_beats_routes() -> None:
    assert make(ROUTES).resolve("eu", method="POST", path="/orders") == "eu"


def test_unknown_endpoint_is_rejected_listing_valid_ones() -> None:
    with pytest.raises(
        RequestRejected, match="unknown endpoint 'nope'; valid: eu, flagged, main, orders, premium"
    ) as info:
        make(ROUTES).resolve("nope")
    assert info.value.status == 400


def test_no_endpoint_no_route_and_no_default_is_rejected() -> None:
    with pytest.raises(RequestRejected, match=r"proxy\.default_endpoint is not set; valid: eu"):
        make([], default=None).resolve(None, path="/x")


def test_endpoint_names_are_sorted() -> None:
    assert make([]).endpoint_names == ("eu", "flagged", "main", "orders", "premium")
