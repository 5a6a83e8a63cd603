"""Pure logic: Prefer parsing, envelopes, the backend registry, the public API."""

from __future__ import annotations

import httpx
import pytest

import openhqm
from openhqm.backends.registry import BACKEND_ALIASES, get_backend_class
from openhqm.envelope import Envelope, Reply, decode_envelope, decode_reply, encode, new_id
from openhqm.errors import ConfigError, UndecodableMessage
from openhqm.forward.client import no_cookies
from openhqm.http.prefer import parse_prefer


def test_prefer_wait_and_respond_async_are_parsed() -> None:
    assert parse_prefer(["wait=5"]).wait_s == 5
    assert parse_prefer(["respond-async, wait=10"]).respond_async
    assert parse_prefer(["handling=lenient", "wait=2.5;foo"]).wait_s == 2.5
    assert parse_prefer(["wait=abc"]).wait_s is None
    assert parse_prefer([]).wait_s is None


def test_envelope_round_trips_binary_bodies() -> None:
    envelope = Envelope(body=bytes(range(256)), headers={"a": "b"}, priority=15, session_id="s")
    decoded = decode_envelope(encode(envelope))
    assert decoded == envelope
    assert len(envelope.id) >= 22 and envelope.correlation_id == envelope.id


def test_garbage_is_not_an_envelope() -> None:
    with pytest.raises(UndecodableMessage):
        decode_envelope(b"\x00garbage")
    with pytest.raises(UndecodableMessage):
        decode_reply(b"{}")
    assert decode_reply(encode(Reply(correlation_id="c", status="COMPLETED", result=[1]))).result == [1]


def test_every_backend_alias_resolves_to_a_backend_class() -> None:
    for alias in BACKEND_ALIASES:
        cls = get_backend_class(alias)
        assert cls.name and cls.capabilities is not None, alias


def test_unknown_queue_type_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="unknown queue type 'redsi'; did you mean 'redis'\\? available: "):
        get_backend_class("redsi")


def test_module_path_backends_are_accepted() -> None:
    assert get_backend_class("openhqm.backends.memory:MemoryBackend").name == "memory"


def test_public_api_is_deliberate() -> None:
    assert openhqm.__all__ == sorted(openhqm.__all__)
    for name in openhqm.__all__:
        assert hasattr(openhqm, name)


def test_the_callback_client_keeps_no_cookie_a_receiver_sets() -> None:
    # The callback client is shared by every client's callbacks; a cookie must not carry over.
    client = httpx.AsyncClient(cookies=no_cookies())
    for url in ("http://receiver.example/hook", "http://localhost:8080/hook", "http://127.0.0.1/hook"):
        answer = httpx.Response(200, headers={"set-cookie": "session=secret; Path=/"},
                                request=httpx.Request("POST", url))
        client.cookies.extract_cookies(answer)
    assert list(client.cookies.jar) == []


def test_correlation_ids_never_start_with_a_dash_that_a_shell_command_would_read_as_an_option() -> None:
    ids = [new_id() for _ in range(5000)]  # a leading "-" would come once in 64 without the guard
    assert not [id_ for id_ in ids if id_.startswith("-")]
    assert len(set(ids)) == len(ids) and {len(id_) for id_ in ids} == {24}
