"""Signed result callbacks to a real receiver on 127.0.0.1, and the SSRF refusal in front of them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from openhqm.errors import RequestRejected
from openhqm.forward import (
    CallbackFailed,
    CallbackSender,
    CallbackSettings,
    UnsafeURL,
    check_callback_url,
    verify,
)
from tests.integration.http_servers import serve

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to give, in order; then 204

    async def hook(self, request: Request) -> Response:
        self.deliveries.append(Delivery(dict(request.headers), await request.body()))
        status = self.answers.pop(0) if self.answers else 204
        if status == 302:
            return RedirectResponse("/elsewhere", status_code=302)
        headers = {"Retry-After": "0"} if status == 503 else {}
        return PlainTextResponse("", status_code=status, headers=headers)


@pytest.fixture(scope="module")
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with serve(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as url:
        receiver.url = url
        yield receiver


@pytest.fixture
def receiver(running_receiver: Receiver) -> Receiver:
    running_receiver.deliveries.clear()
    running_receiver.answers.clear()
    return running_receiver


def settings(**overrides: object) -> CallbackSettings:
    values: dict[str, object] = {
        "enabled": True,
        "secret": SECRET,
        "allow_hosts": ["127.0.0.1"],
        "retry": {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05},
    }
    return CallbackSettings.model_validate({**values, **overrides})


def expected_signature(headers: dict[str, str], body: bytes) -> str:
    """Computed here from the Standard Webhooks spec, independently of the code under test."""
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(KEY, content, hashlib.sha256).digest()).decode()


async def test_callback_is_signed_per_standard_webhooks_and_verifiable(receiver: Receiver) -> None:
    result = {"correlation_id": "c-1", "status": "COMPLETED", "result": {"ok": True}}
    async with CallbackSender(settings()) as sender:
        delivery = await sender.send(receiver.url + "/hook", result, webhook_id="msg_c-1")
    assert (delivery.status_code, delivery.attempts, delivery.webhook_id) == (204, 1, "msg_c-1")
    [got] = receiver.deliveries
    assert orjson.loads(got.body) == result
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == "msg_c-1"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert got.headers["webhook-signature"] == expected_signature(got.headers, got.body)
    assert verify(SECRET, got.headers, got.body)
    assert not verify(SECRET, got.headers, got.body + b" ")
    assert not verify("whsec_" + base64.b64encode(b"other-key").decode(), got.headers, got.body)
    assert not verify(SECRET, got.headers, got.body, now=time.time() + 3600)


async def test_failed_attempts_are_retried_with_the_same_id(receiver: Receiver) -> None:
    receiver.answers = [503, 500]
    async with CallbackSender(settings()) as sender:
        delivery = await sender.send(receiver.url + "/hook", {"n": 1})
    assert (delivery.status_code, delivery.attempts) == (204, 3)
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
    assert all(verify(SECRET, d.headers, d.body) for d in receiver.deliveries)


async def test_retries_end_with_callback_failed(receiver: Receiver) -> None:
    receiver.answers = [503, 503, 503, 503]
    async with CallbackSender(settings()) as sender:
        with pytest.raises(CallbackFailed, match="after 3 attempt") as info:
            await sender.send(receiver.url + "/hook?token=hidden", {"n": 1})
    assert (info.value.attempts, info.value.status_code) == (3, 503)
    assert "hidden" not in str(info.value)


@pytest.mark.parametrize("status", [400, 302])
async def test_client_errors_and_redirects_are_not_retried(receiver: Receiver, status: int) -> None:
    receiver.answers = [status]
    async with CallbackSender(settings()) as sender:
        with pytest.raises(CallbackFailed, match=f"HTTP {status}") as info:
            await sender.send(receiver.url + "/hook", {"n": 1})
    assert info.value.attempts == 1 and len(receiver.deliveries) == 1


async def test_unreachable_receiver_is_retried_then_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with CallbackSender(settings()) as sender:
        with pytest.raises(CallbackFailed, match="unreachable") as info:
            await sender.send(f"http://127.0.0.1:{port}/hook", {"n": 1})
    assert info.value.attempts == 3


async def test_loopback_is_refused_at_delivery_unless_allow_listed(receiver: Receiver) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost") + "/hook"
    async with CallbackSender(settings(allow_hosts=[])) as sender:
        with pytest.raises(CallbackFailed, match=r"refused.*local host name") as info:
            await sender.send(url, {"n": 1})
    assert info.value.attempts == 1 and receiver.deliveries == []
    async with CallbackSender(settings(allow_hosts=["localhost"])) as sender:
        assert (await sender.send(url, {"n": 1})).status_code == 204


async def test_a_name_resolving_to_loopback_is_refused_and_pinned_when_its_address_is_allowed(
    receiver: Receiver,
) -> None:
    host = socket.gethostname()
    if {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)} != {"127.0.0.1"}:
        pytest.skip(f"{host} does not resolve to 127.0.0.1 only here")
    url = receiver.url.replace("127.0.0.1", host) + "/hook"
    async with CallbackSender(settings(allow_hosts=[])) as sender:
        with pytest.raises(CallbackFailed, match=r"resolves to 127\.0\.0\.1 is loopback"):
            await sender.send(url, {"n": 1})
    async with CallbackSender(settings(allow_hosts=["127.0.0.1"])) as sender:
        await sender.send(url, {"n": 1})
    [got] = receiver.deliveries
    assert got.headers["host"] == url.split("/")[2]  # connected to the address, named the host


def test_submit_time_check_refuses_unsafe_urls_and_disabled_callbacks() -> None:
    with pytest.raises(UnsafeURL, match=r"169\.254\.169\.254 is a cloud metadata"):
        check_callback_url("http://169.254.169.254/latest", settings(allow_hosts=[]))
    with pytest.raises(RequestRejected, match="callbacks are disabled"):
        check_callback_url("https://example.com/hook", CallbackSettings())
    check_callback_url("https://example.com/hook", settings())
