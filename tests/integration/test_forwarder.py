"""The Forwarder against real HTTP servers on 127.0.0.1 (see forward_backend.py)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import os
import socket
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from openhqm.envelope import Caller
from openhqm.errors import ConfigError, RequestRejected
from openhqm.forward import (
    AuthFailed,
    CircuitOpen,
    Forwarder,
    ForwardError,
    ForwardRequest,
    ForwardResponse,
    ProxySettings,
    ResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.integration.forward_backend import CLIENT_ID, Backend
from tests.integration.http_servers import make_tls_files, serve

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def running_backend() -> Iterator[Backend]:
    backend = Backend()
    with serve(backend.app) as url:
        backend.url = url
        yield backend


@pytest.fixture
def backend(running_backend: Backend) -> Backend:
    running_backend.reset()
    return running_backend


@asynccontextmanager
async def forwarder(**endpoints: dict[str, Any]) -> AsyncIterator[Forwarder]:
    async with Forwarder(ProxySettings(enabled=True, endpoints=endpoints)) as fwd:
        yield fwd


def echoed(resp: ForwardResponse) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(resp.body)
    data["header_map"] = {}
    for name, value in data["headers"]:
        data["header_map"].setdefault(name, []).append(value)
    return data


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    """The backend runs in another thread and offers no event to await, so poll it briefly."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- headers, paths, methods -------------------------------------------------------------------


async def test_client_headers_pass_except_hop_by_hop_credentials_and_stripped(backend: Backend) -> None:
    ep = {"url": backend.url + "/echo", "headers": {"X-Static": "s"}, "strip_headers": ["X-Internal-*"]}
    incoming = {
        "Authorization": "Bearer client-token",
        "Cookie": "session=abc",
        "Connection": "close, X-Hop",
        "X-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic eA==",
        "Host": "evil.example",
        "X-Keep": "yes",
        "X-Internal-Secret": "no",
        "X-Forwarded-For": "1.2.3.4",
        "X-Static": "from-client",
    }
    async with forwarder(api=ep) as fwd:
        resp = await fwd.forward(
            ForwardRequest(
                endpoint="api",
                headers=incoming,
                body=b'{"a":1}',
                content_type="application/json",
                traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                correlation_id="corr-1",
                client=Caller(addr="10.9.8.7", proto="https", host="api.example"),
            )
        )
    seen = echoed(resp)["header_map"]
    for absent in (
        "authorization",
        "cookie",
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-internal-secret",
    ):
        assert absent not in seen, absent
    assert seen["host"] == [backend.url.removeprefix("http://")]
    assert seen["x-keep"] == ["yes"]
    assert seen["x-static"] == ["s"]
    assert seen["x-forwarded-for"] == ["1.2.3.4, 10.9.8.7"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["api.example"]
    assert seen["traceparent"] == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    assert seen["x-correlation-id"] == ["corr-1"]
    assert seen["content-type"] == ["application/json"]
    assert seen["content-length"] == ["7"]


async def test_authorization_and_cookie_pass_only_when_named_in_forward_headers(backend: Backend) -> None:
    ep = {"url": backend.url + "/echo", "forward_headers": ["*", "Authorization"]}
    async with forwarder(api=ep) as fwd:
        resp = await fwd.forward(
            ForwardRequest(endpoint="api", headers={"Authorization": "Bearer client-token", "Cookie": "c=1"})
        )
    seen = echoed(resp)["header_map"]
    assert seen["authorization"] == ["Bearer client-token"]
    assert "cookie" not in seen


async def test_a_cookie_one_client_received_is_never_sent_with_another_clients_request(backend: Backend) -> None:
    # One pooled session serves every client: it must not keep cookies. By a host name, because
    # aiohttp's default jar ignores cookies from IP addresses and would hide the leak.
    ep = {"url": backend.url.replace("127.0.0.1", "localhost"), "forward_headers": ["*"]}
    async with forwarder(api=ep) as fwd:
        login = await fwd.forward(ForwardRequest(endpoint="api", path="/login"))
        assert "client-a-secret" in (login.header("set-cookie") or "")  # the first client gets its cookie
        other = await fwd.forward(ForwardRequest(endpoint="api", path="/echo"))
    assert "cookie" not in echoed(other)["header_map"]


async def test_sidecar_path_and_query_are_appended_to_the_endpoint_url(backend: Backend) -> None:
    async with forwarder(api={"url": backend.url + "/echo/base?code=k"}) as fwd:
        resp = await fwd.forward(
            ForwardRequest(endpoint="api", method="GET", path="/orders/7 x", query="a=1&b=%20")
        )
    data = echoed(resp)
    assert data["method"] == "GET"
    assert data["path"] == "/echo/base/orders/7%20x"
    assert data["query"] == "code=k&a=1&b=%20"


@pytest.mark.parametrize("path", ["/../admin", "/a/./b", "/a/%2e%2E/b", "/.."])
async def test_dot_segments_in_a_path_are_rejected(backend: Backend, path: str) -> None:
    async with forwarder(api={"url": backend.url + "/echo/base"}) as fwd:
        with pytest.raises(RequestRejected, match="segments"):
            await fwd.forward(ForwardRequest(endpoint="api", path=path))
    assert backend.hits.total() == 0


async def test_method_defaults_to_the_endpoint_method_and_can_be_overridden(backend: Backend) -> None:
    async with forwarder(api={"url": backend.url + "/echo", "method": "put"}) as fwd:
        default = await fwd.forward(ForwardRequest(endpoint="api", body=b"x"))
        override = await fwd.forward(ForwardRequest(endpoint="api", method="delete"))
        with pytest.raises(RequestRejected, match="method"):
            await fwd.forward(ForwardRequest(endpoint="api", method="GET /x"))
    assert echoed(default)["method"] == "PUT"
    assert echoed(override)["method"] == "DELETE"


async def test_unknown_endpoint_is_rejected_with_the_valid_names(backend: Backend) -> None:
    async with forwarder(api={"url": backend.url}, billing={"url": backend.url}) as fwd:
        with pytest.raises(RequestRejected, match="unknown endpoint 'nope'; valid: api, billing") as info:
            await fwd.forward(ForwardRequest(endpoint="nope"))
    assert info.value.status == 400


async def test_default_endpoint_url_becomes_an_endpoint_named_default(backend: Backend) -> None:
    async with Forwarder(ProxySettings(enabled=True, default_endpoint=backend.url + "/echo")) as fwd:
        name = fwd.resolve(None, method="POST", path="/", headers={}, payload_json=None)
        resp = await fwd.forward(ForwardRequest(endpoint=name))
    assert (name, resp.status_code) == ("default", 200)


# --- outbound auth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        ({"auth": {"type": "bearer", "token": "t0k"}}, "authorization", "Bearer t0k"),
        ({"auth": {"type": "api_key", "header": "X-Api-Key", "key": "k3y"}}, "x-api-key", "k3y"),
        (
            {"auth": {"type": "basic", "username": "ann", "password": "p@ss:w"}},
            "authorization",
            "Basic " + base64.b64encode(b"ann:p@ss:w").decode(),
        ),
        ({"auth": {"type": "custom", "header": "X-Signature", "value": "sig"}}, "x-signature", "sig"),
        ({"auth_type": "bearer", "auth_token": "flat"}, "authorization", "Bearer flat"),
        ({"auth_type": "api_key", "auth_token": "flat-key"}, "x-api-key", "flat-key"),
        (
            {"auth_type": "basic", "auth_username": "u", "auth_password": "p"},
            "authorization",
            "Basic " + base64.b64encode(b"u:p").decode(),
        ),
        ({"auth_type": "custom", "auth_header_name": "X-Token", "auth_token": "c"}, "x-token", "c"),
    ],
    ids=["bearer", "api_key", "basic", "custom", "flat-bearer", "flat-api_key", "flat-basic", "flat-custom"],
)
async def test_static_auth_sets_its_header(
    backend: Backend, auth: dict[str, Any], header: str, value: str
) -> None:
    async with forwarder(api={"url": backend.url + "/echo", **auth}) as fwd:
        resp = await fwd.forward(ForwardRequest(endpoint="api", headers={header: "from-client"}))
    assert echoed(resp)["header_map"][header] == [value]


def oauth2(backend: Backend, **extra: Any) -> dict[str, Any]:
    return {
        "url": backend.url + "/protected",
        "auth": {
            "type": "oauth2_client_credentials",
            "token_url": backend.url + "/token",
            "client_id": CLIENT_ID,
            "client_secret": backend.client_secret,
            "scope": "orders:write",
            **extra,
        },
    }


async def test_oauth2_token_is_fetched_once_shared_and_refreshed_before_expiry(backend: Backend) -> None:
    backend.token_lifetime_s = 4  # refreshed 2 s early (at most half the lifetime)
    async with forwarder(api=oauth2(backend)) as fwd:
        first = await asyncio.gather(*(fwd.forward(ForwardRequest(endpoint="api")) for _ in range(10)))
        assert [r.status_code for r in first] == [200] * 10
        assert backend.tokens == ["tok-1"]  # single flight: ten concurrent callers, one token request
        await asyncio.sleep(2.05)  # the token's refresh time is a clock reading; nothing to await
        later = await fwd.forward(ForwardRequest(endpoint="api"))
    assert orjson.loads(later.body) == {"token": "tok-2"}
    assert backend.tokens == ["tok-1", "tok-2"]
    request = backend.token_requests[0]
    assert request["grant_type"] == "client_credentials" and request["scope"] == "orders:write"
    assert request["authorization"].startswith("Basic ") and "client_secret" not in request


async def test_oauth2_credentials_can_travel_in_the_form_body(backend: Backend) -> None:
    async with forwarder(api=oauth2(backend, client_auth="body")) as fwd:
        resp = await fwd.forward(ForwardRequest(endpoint="api"))
    assert resp.status_code == 200
    assert backend.token_requests[0]["client_id"] == CLIENT_ID
    assert backend.token_requests[0]["authorization"] == ""


async def test_oauth2_token_refused_by_the_backend_is_replaced_once(backend: Backend) -> None:
    async with forwarder(api=oauth2(backend)) as fwd:
        await fwd.forward(ForwardRequest(endpoint="api"))
        backend.revoked.add("tok-1")
        resp = await fwd.forward(ForwardRequest(endpoint="api"))
        backend.revoked.add("tok-2")
        backend.token_status = 503  # no third token to be had: try the whole call again later
        with pytest.raises(AuthFailed) as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
    assert orjson.loads(resp.body) == {"token": "tok-2"}
    assert backend.seen_tokens == ["tok-1", "tok-1", "tok-2", "tok-2"]
    assert info.value.retryable


async def test_oauth2_token_endpoint_failure_is_auth_failed(backend: Backend) -> None:
    wrong = {**oauth2(backend), "auth": {**oauth2(backend)["auth"], "client_secret": "wrong"}}
    async with forwarder(api=wrong) as fwd:
        with pytest.raises(AuthFailed, match=r"HTTP 401 \(invalid_client\)") as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
    assert info.value.retryable is False
    assert backend.hits["/protected"] == 0


# --- retryable statuses and timeouts -----------------------------------------------------------


async def test_503_with_retry_after_seconds_raises_retryable(backend: Backend) -> None:
    async with forwarder(api={"url": backend.url + "/status/503?retry_after=7"}) as fwd:
        with pytest.raises(ForwardError) as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
    err = info.value
    assert (err.retryable, err.retry_after_s, err.status_code) == (True, 7.0, 503)
    assert err.response is not None and orjson.loads(err.response.body) == {"status": 503}


async def test_429_with_retry_after_http_date_raises_retryable(backend: Backend) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    async with forwarder(api={"url": backend.url + "/status/429"}) as fwd:
        with pytest.raises(ForwardError) as info:
            await fwd.forward(ForwardRequest(endpoint="api", query=f"retry_after={when}"))
    assert info.value.retryable and info.value.status_code == 429
    assert info.value.retry_after_s is not None and 20 < info.value.retry_after_s <= 30


@pytest.mark.parametrize("code", [400, 404, 500])
async def test_other_statuses_are_normal_responses(backend: Backend, code: int) -> None:
    async with forwarder(api={"url": backend.url + f"/status/{code}"}) as fwd:
        resp = await fwd.forward(ForwardRequest(endpoint="api"))
    assert resp.status_code == code


async def test_retry_on_status_and_policy_come_from_the_endpoint(backend: Backend) -> None:
    retry = {"max_attempts": 4, "on_status": [500], "base_delay_s": 0.5, "max_delay_s": 9, "max_age_s": 60}
    async with forwarder(
        own={"url": backend.url + "/status", "retry": retry}, plain={"url": backend.url + "/status/503"}
    ) as fwd:
        with pytest.raises(ForwardError) as info:
            await fwd.forward(ForwardRequest(endpoint="own", path="/500"))
        passthrough = await fwd.forward(ForwardRequest(endpoint="own", path="/503"))
        policy, plain = fwd.retry_policy("own"), fwd.retry_policy("plain")
    assert info.value.status_code == 500 and info.value.retry_after_s is None
    assert passthrough.status_code == 503
    assert plain is None
    assert policy is not None and (policy.max_attempts, policy.backoff.max_delay_s, policy.max_age_s) == (4, 9, 60)


async def test_slow_backend_times_out_as_retryable(backend: Backend) -> None:
    async with forwarder(
        read={"url": backend.url + "/slow?s=3", "timeout_s": {"connect": 1, "read": 0.2}},
        total={"url": backend.url + "/slow?s=3", "timeout_s": {"read": 10, "total": 0.2}},
        number={"url": backend.url + "/slow?s=3", "timeout_s": 0.2},
    ) as fwd:
        for name in ("read", "total", "number"):
            with pytest.raises(UpstreamTimeout) as info:
                await fwd.forward(ForwardRequest(endpoint=name))
            assert info.value.retryable


async def test_unreachable_backend_is_retryable_unavailable() -> None:
    async with forwarder(api={"url": f"http://127.0.0.1:{closed_port()}/x"}) as fwd:
        with pytest.raises(UpstreamUnavailable) as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
    assert info.value.retryable and "unreachable" in str(info.value)


# --- circuit breaker -----------------------------------------------------------------------------


def breaker_endpoint(backend: Backend, **circuit: Any) -> dict[str, Any]:
    return {
        "url": backend.url + "/switch",
        "circuit": {"failure_threshold": 2, "reset_timeout_s": 0.3, "half_open_max_calls": 1, **circuit},
    }


async def test_circuit_opens_after_consecutive_failures_and_refuses_without_calling(backend: Backend) -> None:
    async with forwarder(api=breaker_endpoint(backend)) as fwd:
        for _ in range(2):
            assert (await fwd.forward(ForwardRequest(endpoint="api"))).status_code == 500
        with pytest.raises(CircuitOpen) as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
    assert info.value.retryable
    assert info.value.retry_after_s is not None and 0 < info.value.retry_after_s <= 0.3
    assert backend.hits["/switch"] == 2


async def test_half_open_lets_one_trial_through_and_its_success_closes(backend: Backend) -> None:
    async with forwarder(api=breaker_endpoint(backend)) as fwd:
        for _ in range(2):
            await fwd.forward(ForwardRequest(endpoint="api"))
        with pytest.raises(CircuitOpen) as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
        await asyncio.sleep(info.value.retry_after_s or 0)
        backend.failing = False
        trial = asyncio.create_task(fwd.forward(ForwardRequest(endpoint="api", query="delay=0.3")))
        await wait_until(lambda: backend.in_flight == 1)
        with pytest.raises(CircuitOpen):  # only one trial at a time
            await fwd.forward(ForwardRequest(endpoint="api"))
        assert (await trial).status_code == 200
        after = await asyncio.gather(*(fwd.forward(ForwardRequest(endpoint="api")) for _ in range(3)))
    assert [r.status_code for r in after] == [200, 200, 200]


async def test_half_open_trial_failure_opens_the_circuit_again(backend: Backend) -> None:
    async with forwarder(api=breaker_endpoint(backend)) as fwd:
        for _ in range(2):
            await fwd.forward(ForwardRequest(endpoint="api"))
        with pytest.raises(CircuitOpen) as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
        await asyncio.sleep(info.value.retry_after_s or 0)
        assert (await fwd.forward(ForwardRequest(endpoint="api"))).status_code == 500  # the trial
        with pytest.raises(CircuitOpen):
            await fwd.forward(ForwardRequest(endpoint="api"))
    assert backend.hits["/switch"] == 3


async def test_transport_failures_open_the_circuit() -> None:
    ep = {"url": f"http://127.0.0.1:{closed_port()}/", "circuit": {"failure_threshold": 3}}
    async with forwarder(api=ep) as fwd:
        for _ in range(3):
            with pytest.raises(UpstreamUnavailable):
                await fwd.forward(ForwardRequest(endpoint="api"))
        with pytest.raises(CircuitOpen):
            await fwd.forward(ForwardRequest(endpoint="api"))


# --- limits, observed at the backend ------------------------------------------------------------


async def test_concurrency_limit_holds_at_the_backend(backend: Backend) -> None:
    async with forwarder(api={"url": backend.url + "/hold", "max_concurrency": 3}) as fwd:
        results = await asyncio.gather(*(fwd.forward(ForwardRequest(endpoint="api")) for _ in range(15)))
    assert [r.status_code for r in results] == [200] * 15
    assert backend.hits["/hold"] == 15
    assert 1 <= backend.max_in_flight <= 3


async def test_calls_beyond_the_limit_wait_for_a_slot_instead_of_timing_out(backend: Backend) -> None:
    # Waiting for a slot is not bounded by the connect/pool timeout (0.2 s here), only the call is.
    ep = {"url": backend.url + "/hold?s=0.3", "max_concurrency": 1, "timeout_s": {"connect": 0.2, "read": 5}}
    async with forwarder(api=ep) as fwd:
        results = await asyncio.gather(*(fwd.forward(ForwardRequest(endpoint="api")) for _ in range(3)))
    assert [r.status_code for r in results] == [200] * 3
    assert backend.max_in_flight == 1


async def test_rate_limit_spreads_calls_at_the_backend(backend: Backend) -> None:
    rate, burst, n = 20.0, 2, 12
    ep = {"url": backend.url + "/hold?s=0", "rate_limit_per_s": rate, "rate_burst": burst}
    async with forwarder(api=ep) as fwd:
        await asyncio.gather(*(fwd.forward(ForwardRequest(endpoint="api")) for _ in range(n)))
    span = max(backend.arrivals) - min(backend.arrivals)
    # A lower bound only: the first call also pays for a new connection, so allow 10% slack.
    assert span >= 0.9 * (n - burst) / rate


# --- bodies, redirects, size limits --------------------------------------------------------------


async def test_20_mib_binary_body_round_trips_byte_for_byte(backend: Backend) -> None:
    payload = os.urandom(20 * MiB)
    ep = {"url": backend.url + "/bytes", "max_response_bytes": 32 * MiB}
    async with forwarder(api=ep) as fwd:
        resp = await fwd.forward(
            ForwardRequest(endpoint="api", body=payload, content_type="application/octet-stream")
        )
    assert resp.status_code == 200
    assert resp.body == payload


async def test_redirect_is_returned_not_followed_by_default(backend: Backend) -> None:
    async with forwarder(api={"url": backend.url + "/redirect?to=/echo/target"}) as fwd:
        resp = await fwd.forward(ForwardRequest(endpoint="api"))
    assert resp.status_code == 302
    assert resp.header("location") == "/echo/target"
    assert backend.hits["/echo/target"] == 0


async def test_redirect_is_followed_when_allowed_and_302_post_becomes_get(backend: Backend) -> None:
    ep = {"url": backend.url + "/redirect?to=/echo/target", "follow_redirects": True}
    async with forwarder(api=ep) as fwd:
        resp = await fwd.forward(ForwardRequest(endpoint="api", body=b"payload", content_type="text/plain"))
        kept = await fwd.forward(ForwardRequest(endpoint="api", query="code=307", body=b"payload"))
    data, data307 = echoed(resp), echoed(kept)
    assert (data["path"], data["method"], data["body_len"]) == ("/echo/target", "GET", 0)
    assert "content-type" not in data["header_map"]
    assert (data307["method"], data307["body_len"]) == ("POST", 7)


async def test_credentials_do_not_follow_a_redirect_to_another_origin(backend: Backend) -> None:
    other = Backend()
    with serve(other.app) as other_url:
        ep = {
            "url": backend.url + f"/redirect?to={other_url}/echo/elsewhere",
            "follow_redirects": True,
            "auth": {"type": "api_key", "header": "X-Api-Key", "key": "never-elsewhere"},
        }
        async with forwarder(api=ep) as fwd:
            resp = await fwd.forward(ForwardRequest(endpoint="api"))
    assert echoed(resp)["path"] == "/echo/elsewhere"
    assert "x-api-key" not in echoed(resp)["header_map"]


async def test_redirect_loop_stops(backend: Backend) -> None:
    ep = {"url": backend.url + "/redirect", "follow_redirects": True}
    async with forwarder(api=ep) as fwd:
        with pytest.raises(ForwardError, match="more than 5 redirects") as info:
            await fwd.forward(ForwardRequest(endpoint="api"))
    assert not info.value.retryable


@pytest.mark.parametrize("route", ["/stream", "/sized"])
async def test_response_larger_than_the_limit_is_refused(backend: Backend, route: str) -> None:
    ep = {"url": backend.url + route, "max_response_bytes": MiB}
    async with forwarder(api=ep) as fwd:
        exact = await fwd.forward(ForwardRequest(endpoint="api", query=f"n={MiB}"))
        with pytest.raises(ResponseTooLarge) as info:
            await fwd.forward(ForwardRequest(endpoint="api", query=f"n={MiB + 1}"))
    assert len(exact.body) == MiB
    assert not info.value.retryable


# --- secrets -------------------------------------------------------------------------------------


CANARY = "CANARY-7f3a9c-secret"


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text


async def test_secrets_never_appear_in_errors_repr_or_logs(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend.client_secret = CANARY
    backend.token_status = 500  # the token endpoint echoes the secret in its error
    settings = ProxySettings(
        enabled=True,
        endpoints={
            "down": {
                "url": f"http://127.0.0.1:{closed_port()}/x",
                "auth": {"type": "bearer", "token": CANARY},
            },
            "basic": {
                "url": f"http://127.0.0.1:{closed_port()}/x",
                "auth": {"type": "basic", "username": "u", "password": CANARY},
            },
            "slow": {
                "url": backend.url + "/slow?s=2",
                "timeout_s": 0.1,
                "auth": {"type": "custom", "header": "X-K", "value": CANARY},
            },
            "idp": oauth2(backend),
        },
    )
    errors: list[BaseException] = []
    async with Forwarder(settings) as fwd:
        for name in ("down", "basic", "slow", "idp"):
            with pytest.raises(ForwardError) as info:
                await fwd.forward(ForwardRequest(endpoint=name))
            errors.append(info.value)
        texts = [repr(fwd), repr(settings), str(settings.model_dump())]
    assert isinstance(errors[3], AuthFailed)
    for err in errors:
        texts += [str(err), repr(err), "".join(traceback.format_exception(err))]
    assert_no_canary(*texts, caplog.text)


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_ca_file_verification_and_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    backend = Backend()
    with serve(
        backend.app,
        ssl_certfile=str(tls.server_cert),
        ssl_keyfile=str(tls.server_key),
        ssl_ca_certs=str(tls.ca),
        ssl_cert_reqs=2,
    ) as url:  # 2 = ssl.CERT_REQUIRED
        mtls = {
            "ca_file": str(tls.ca),
            "client_cert": str(tls.client_cert),
            "client_key": str(tls.client_key),
        }
        async with forwarder(
            ok={"url": url + "/echo", "tls": mtls},
            public_roots={
                "url": url + "/echo",
                "tls": {"client_cert": str(tls.client_cert), "client_key": str(tls.client_key)},
            },
            no_cert={"url": url + "/echo", "tls": {"ca_file": str(tls.ca)}},
            unverified={
                "url": url + "/echo",
                "tls": {
                    "verify": False,
                    "client_cert": str(tls.client_cert),
                    "client_key": str(tls.client_key),
                },
            },
        ) as fwd:
            assert (await fwd.forward(ForwardRequest(endpoint="ok"))).status_code == 200
            assert (await fwd.forward(ForwardRequest(endpoint="unverified"))).status_code == 200
            with pytest.raises(UpstreamUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                await fwd.forward(ForwardRequest(endpoint="public_roots"))
            with pytest.raises(UpstreamUnavailable):
                await fwd.forward(ForwardRequest(endpoint="no_cert"))


async def test_unreadable_tls_file_fails_start_naming_the_setting(tmp_path: Path) -> None:
    fwd = Forwarder(
        ProxySettings(
            enabled=True,
            endpoints={
                "api": {"url": "https://127.0.0.1:1/", "tls": {"ca_file": str(tmp_path / "missing.pem")}}
            },
        )
    )
    with pytest.raises(ConfigError, match=r"proxy\.endpoints\.api\.tls\.ca_file"):
        await fwd.start()


async def test_a_connection_idle_longer_than_keepalive_is_not_reused() -> None:
    """A backend closes idle keep-alive connections (uvicorn after 5 s); reusing one it is closing fails
    the POST, so the pool drops connections idle for `timeout_s.keepalive` (default 4 s) itself."""
    ports: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ports.append(scope["client"][1])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    with serve(app) as url:
        endpoint = {"url": url, "timeout_s": {"keepalive": 0.2}}
        async with forwarder(api=endpoint) as fwd:
            await fwd.forward(ForwardRequest(endpoint="api", body=b"{}"))
            await fwd.forward(ForwardRequest(endpoint="api", body=b"{}"))  # at once: the same connection
            await asyncio.sleep(0.5)  # idle beyond keepalive: what this test is about is time itself
            await fwd.forward(ForwardRequest(endpoint="api", body=b"{}"))
    assert ports[0] == ports[1] and ports[2] != ports[1], ports
