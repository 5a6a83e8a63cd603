"""Which headers cross the proxy, in each direction."""

from __future__ import annotations

from openhqm.forward.headers import ClientInfo, HeaderPolicy, response_headers, strip_hop_by_hop


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [n.lower() for n, _ in headers]


def as_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {n.lower(): v for n, v in headers}


def test_hop_by_hop_headers_and_those_named_by_connection_are_stripped() -> None:
    headers = [
        ("Connection", "keep-alive, X-Session-Hop ,x-other"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Anything", "1"),
        ("TE", "trailers"),
        ("Trailer", "Expires"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("X-Session-Hop", "1"),
        ("X-Other", "2"),
        ("X-Kept", "3"),
    ]
    assert strip_hop_by_hop(headers) == [("X-Kept", "3")]


def test_credentials_are_not_forwarded_by_default() -> None:
    out = HeaderPolicy().request_headers({"Authorization": "Bearer x", "Cookie": "a=1", "X-Ok": "1"})
    assert names(out) == ["x-ok"]


def test_credentials_are_forwarded_only_when_named_exactly() -> None:
    glob = HeaderPolicy(forward=["*", "Auth*"]).request_headers({"Authorization": "Bearer x"})
    named = HeaderPolicy(forward=["authorization", "COOKIE"]).request_headers(
        {"Authorization": "Bearer x", "Cookie": "a=1", "X-Other": "no"}
    )
    assert glob == []
    assert as_dict(named) == {"authorization": "Bearer x", "cookie": "a=1"}


def test_allow_list_and_strip_list_use_case_insensitive_globs() -> None:
    policy = HeaderPolicy(forward=["X-Trace-*", "accept"], strip=["x-trace-debug"])
    out = policy.request_headers({"X-Trace-Id": "1", "x-trace-debug": "2", "Accept": "*/*", "X-Other": "3"})
    assert as_dict(out) == {"x-trace-id": "1", "accept": "*/*"}


def test_host_length_and_encoding_are_left_to_the_client() -> None:
    out = HeaderPolicy().request_headers(
        {
            "Host": "evil",
            "Content-Length": "99",
            "Accept-Encoding": "br",
            "Expect": "100-continue",
            "X-A": "1",
        }
    )
    assert names(out) == ["x-a"]


def test_forwarded_headers_are_added_and_x_forwarded_for_is_appended() -> None:
    out = HeaderPolicy().request_headers(
        {"X-Forwarded-For": "1.1.1.1", "X-Forwarded-Proto": "spoofed", "X-Forwarded-Host": "spoofed"},
        client=ClientInfo(addr="10.0.0.7", proto="https", host="api.example"),
    )
    assert as_dict(out) == {
        "x-forwarded-for": "1.1.1.1, 10.0.0.7",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "api.example",
    }


def test_x_forwarded_for_from_the_client_is_dropped_when_not_allowed() -> None:
    out = HeaderPolicy(forward=["accept"]).request_headers(
        {"X-Forwarded-For": "6.6.6.6"}, client=ClientInfo(addr="10.0.0.7")
    )
    assert as_dict(out) == {"x-forwarded-for": "10.0.0.7"}


def test_tracing_correlation_and_content_type_come_from_the_request() -> None:
    out = HeaderPolicy(forward=["x-a"]).request_headers(
        {"traceparent": "client", "X-Correlation-ID": "client", "Content-Type": "text/plain", "X-A": "1"},
        content_type="application/json",
        traceparent="00-abc-def-01",
        correlation_id="c-1",
    )
    assert as_dict(out) == {
        "x-a": "1",
        "content-type": "application/json",
        "traceparent": "00-abc-def-01",
        "x-correlation-id": "c-1",
    }


def test_client_content_type_travels_with_the_body_even_when_not_allow_listed() -> None:
    out = HeaderPolicy(forward=["x-a"]).request_headers({"Content-Type": "text/csv"})
    assert as_dict(out) == {"content-type": "text/csv"}


def test_static_headers_replace_client_headers_of_the_same_name() -> None:
    out = HeaderPolicy(static={"X-Tenant": "acme"}).request_headers([("x-tenant", "a"), ("X-Tenant", "b")])
    assert out == [("X-Tenant", "acme")]


def test_repeated_client_headers_are_kept() -> None:
    out = HeaderPolicy().request_headers([("Accept", "a"), ("Accept", "b")])
    assert out == [("Accept", "a"), ("Accept", "b")]


def test_response_headers_lose_hop_by_hop_length_and_encoding() -> None:
    out = response_headers(
        [
            ("Connection", "close, X-Internal"),
            ("X-Internal", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "10"),
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    assert out == [("content-type", "application/json"), ("set-cookie", "a=1"), ("set-cookie", "b=2")]
