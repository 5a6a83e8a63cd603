"""`fanout.<group>`: what a member may name, checked with the configuration (endpoints) or at
startup (handlers)."""

from __future__ import annotations

import pytest

from openhqm.config import load_settings
from openhqm.errors import ConfigError
from openhqm.fanout import check_handlers, split_member

PROXY = {"enabled": True, "endpoints": {"pricing": {"url": "http://127.0.0.1:9/quote"}}}


def test_members_naming_a_configured_endpoint_or_a_handler_are_accepted() -> None:
    settings = load_settings(None, {"proxy": PROXY, "fanout": {"quote": ["endpoint:pricing", "handler:risk"]}})
    assert settings.fanout == {"quote": ["endpoint:pricing", "handler:risk"]}
    assert [split_member(m) for m in settings.fanout["quote"]] == [("pricing", None), (None, "risk")]


@pytest.mark.parametrize(("fanout", "proxy", "named"), [
    ({"g": ["pricing"]}, PROXY, "neither 'endpoint:<name>' nor 'handler:<name>'"),
    ({"g": ["endpoint:pricnig"]}, PROXY, "'endpoint:pricnig' names no configured endpoint (proxy.endpoints: pricing)"),
    ({"g": ["endpoint:pricing"]}, {}, "'endpoint:pricing' needs proxy mode"),
    ({"g": ["handler:a", "handler:a"]}, {}, "fanout.g names a member twice"),
    ({"g": []}, {}, "fanout.g has no members"),
])
def test_a_bad_member_is_a_configuration_error_naming_it(fanout: dict[str, list[str]], proxy: dict[str, object],
                                                          named: str) -> None:
    with pytest.raises(ConfigError, match="fanout") as caught:
        load_settings(None, {"proxy": proxy, "fanout": fanout})
    assert named in str(caught.value)


def test_a_handler_member_no_handler_answers_is_refused_at_startup() -> None:
    check_handlers({"g": ["handler:echo", "endpoint:x"]}, ["echo"])
    with pytest.raises(ConfigError, match="'handler:risk' names no registered handler \\(registered: echo\\)"):
        check_handlers({"g": ["handler:risk"]}, ["echo"])
