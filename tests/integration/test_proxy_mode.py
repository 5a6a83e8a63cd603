"""Proxy and sidecar mode in the test process (tests/harness.py): the serve, listener and worker
selections of the runtime and a real HTTP backend on 127.0.0.1. Covers HTTP -> queue -> HTTP,
HTTP -> queue alone, queue -> HTTP alone. Moved from tests/e2e/test_proxy.py."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openhqm import OpenHQM
from openhqm.forward import verify
from openhqm.logging import redact
from openhqm.runtime import Runtime
from tests.harness import eventually, served, settings, wait_until
from tests.integration.http_servers import serve

CANARY = "canary-token-5f1e2d"
CALLBACK_SECRET = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM="


class Backend:
    """Records what it receives; /flaky answers 503 (Retry-After: 0) until told to recover."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.flaky_left = 0
        self.callbacks: list[tuple[dict[str, str], bytes]] = []

    async def any(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append({"method": request.method, "path": request.url.path, "query": request.url.query,
                          "headers": dict(request.headers), "body": body})
        path = request.url.path
        if path.startswith("/flaky") and self.flaky_left > 0:
            self.flaky_left -= 1
            return Response(b"busy", status_code=503, headers={"Retry-After": "0"})
        if path.startswith("/missing"):
            return Response(b'{"error": "nope"}', status_code=404, media_type="application/json")
        if path.startswith("/down"):
            return Response(b"down", status_code=503, headers={"Retry-After": "0"})
        if path.startswith("/callback"):
            self.callbacks.append((dict(request.headers), body))
            return Response(status_code=204)
        return Response(body, status_code=201 if request.method == "PUT" else 200,
                         media_type=request.headers.get("content-type", "application/octet-stream"),
                         headers={"X-Backend": "yes", "Connection": "close, X-Secret-Hop", "X-Secret-Hop": "1"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.any,
                                       methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[Backend, str]]:
    recorder = Backend()
    with serve(recorder.app()) as url:
        yield recorder, url


def proxy_sections(url: str, **proxy: Any) -> dict[str, Any]:
    endpoints = {
        "echo": {"url": f"{url}/echo", "auth": {"type": "bearer", "token": CANARY}},
        "flaky": {"url": f"{url}/flaky", "retry": {"max_attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}},
        "missing": {"url": f"{url}/missing"},
        "down": {"url": f"{url}/down", "auth_type": "bearer", "auth_token": CANARY,
                 "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}},
        "app": {"url": url, "max_response_bytes": 64 * 1024 * 1024},
    }
    return {
        "proxy": {"enabled": True, "endpoints": endpoints, "default_endpoint": "echo", **proxy},
        "server": {"max_body_bytes": 64 * 1024 * 1024},
        "callbacks": {"enabled": True, "secret": CALLBACK_SECRET, "allow_hosts": ["127.0.0.1"]},
    }


@dataclass
class Server:
    url: str


@pytest.fixture(scope="module")
def proxy(backend: tuple[Backend, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = settings(tmp_path_factory.mktemp("proxy"), **proxy_sections(backend[1]))
    with served(OpenHQM(), config) as url:
        yield Server(url)


@pytest.fixture(scope="module")
def sidecar(backend: tuple[Backend, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    sections = proxy_sections(backend[1], default_endpoint="app",
                              sidecar={"enabled": True, "prefix": "/svc", "wait_s": 20})
    with served(OpenHQM(), settings(tmp_path_factory.mktemp("sidecar"), **sections)) as url:
        yield Server(url)


def submit(server: Server, payload: Any, metadata: dict[str, Any], wait: float = 20,
           headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/submit", json={"payload": payload, "metadata": metadata,
                      "headers": headers or {}}, headers={"Prefer": f"wait={wait:g}"}, timeout=60)


def test_forwarded_request_returns_the_backends_answer_as_result(proxy: Server,
                                                                 backend: tuple[Backend, str]) -> None:
    recorder, _ = backend
    response = submit(proxy, {"order": 7}, {"endpoint": "echo"}, headers={"X-Trace-Me": "1", "Connection": "x",
                                                                          "Authorization": "Bearer client"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "COMPLETED"
    result = body["result"]
    assert result["status_code"] == 200 and result["body"] == {"order": 7}
    assert result["headers"]["x-backend"] == "yes"
    assert "x-secret-hop" not in result["headers"], "headers named by Connection are hop-by-hop"
    seen = recorder.seen[-1]
    assert seen["headers"]["authorization"] == f"Bearer {CANARY}", "the endpoint's own auth is sent"
    assert seen["headers"]["x-trace-me"] == "1"


def test_default_endpoint_takes_requests_that_name_none(proxy: Server) -> None:
    body = submit(proxy, [1, 2], {}).json()
    assert body["result"]["body"] == [1, 2]


def test_unknown_endpoint_is_refused_at_submit_listing_valid_names(proxy: Server) -> None:
    response = submit(proxy, 1, {"endpoint": "ehco"})
    assert response.status_code == 400
    assert "ehco" in response.json()["detail"] and "echo" in response.json()["detail"]


def test_backend_4xx_is_a_completed_request_carrying_it(proxy: Server) -> None:
    body = submit(proxy, 1, {"endpoint": "missing"}).json()
    assert body["status"] == "COMPLETED"
    assert body["result"]["status_code"] == 404 and body["result"]["body"] == {"error": "nope"}


def test_retryable_status_is_retried_until_the_backend_recovers(proxy: Server,
                                                                backend: tuple[Backend, str]) -> None:
    recorder, _ = backend
    recorder.flaky_left = 2
    body = submit(proxy, {"x": 1}, {"endpoint": "flaky"}).json()
    assert body["status"] == "COMPLETED" and body["attempts"] == 3
    assert body["result"]["status_code"] == 200


def test_exhausted_retries_fail_and_dead_letter_without_leaking_credentials(proxy: Server) -> None:
    with structlog.testing.capture_logs() as events:
        body = submit(proxy, {"x": 2}, {"endpoint": "down"}).json()
    assert any(event["event"] == "dead-lettered" for event in events), "the worker's log lines were seen"
    logged = json.dumps([redact(None, "", event) for event in events], default=str)  # as configure_logging does
    assert body["status"] == "FAILED" and body["attempts"] == 2
    assert "503" in body["error"]
    status = httpx.get(f"{proxy.url}/api/v1/status/{body['correlation_id']}").text
    dead = httpx.get(f"{proxy.url}/api/v1/dlq").text
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert body["correlation_id"] in dead
    for text in (json.dumps(body), status, dead, metrics, logged):
        assert CANARY not in text
    assert 'openhqm_upstream_requests_total{endpoint="down",status_class="5xx"}' in metrics


def test_result_callback_is_signed_and_verifiable(proxy: Server, backend: tuple[Backend, str]) -> None:
    recorder, url = backend
    before = len(recorder.callbacks)
    body = submit(proxy, {"cb": 1}, {"endpoint": "echo", "callback_url": f"{url}/callback"}).json()
    wait_until(lambda: len(recorder.callbacks) > before)  # the callback is sent after the answer
    headers, raw = recorder.callbacks[-1]
    verify(CALLBACK_SECRET, headers, raw)
    delivered = json.loads(raw)
    assert delivered["correlation_id"] == body["correlation_id"] and delivered["status"] == "COMPLETED"
    assert headers["webhook-id"] == body["correlation_id"]


def test_callback_to_a_private_address_is_refused_at_submit(proxy: Server) -> None:
    response = submit(proxy, 1, {"endpoint": "echo", "callback_url": "http://169.254.169.254/latest"})
    assert response.status_code == 400
    assert "169.254.169.254" in response.json()["detail"]


def test_sidecar_replays_method_path_query_and_returns_the_backends_response(
    sidecar: Server, backend: tuple[Backend, str]
) -> None:
    recorder, _ = backend
    response = httpx.put(f"{sidecar.url}/svc/items/42?color=red&x=%2F", content=b"\x00\x01binary",
                         headers={"Content-Type": "application/octet-stream", "X-API-Key": "bridge-only"},
                         timeout=30)
    assert response.status_code == 201
    assert response.content == b"\x00\x01binary"
    assert response.headers["x-backend"] == "yes"
    assert "x-secret-hop" not in response.headers
    seen = recorder.seen[-1]
    assert (seen["method"], seen["path"], seen["query"]) == ("PUT", "/items/42", "color=red&x=%2F")
    assert "x-api-key" not in seen["headers"]


def test_metadata_cannot_choose_the_forwarded_for_host_or_proto_headers(
    proxy: Server, backend: tuple[Backend, str]
) -> None:
    recorder, _ = backend
    spoofed = {"endpoint": "echo", "client_addr": "1.2.3.4", "client_host": "admin.internal",
               "client_proto": "gopher"}
    assert submit(proxy, {"spoof": True}, spoofed).status_code == 200
    seen = next(s for s in reversed(recorder.seen) if s["body"] == b'{"spoof":true}')["headers"]
    assert "1.2.3.4" not in seen.get("x-forwarded-for", "")
    assert seen.get("x-forwarded-host") != "admin.internal"
    assert seen.get("x-forwarded-proto") != "gopher"


def test_sidecar_tells_the_backend_the_connections_own_address_host_and_scheme(
    sidecar: Server, backend: tuple[Backend, str]
) -> None:
    recorder, _ = backend
    host = sidecar.url.removeprefix("http://")
    assert httpx.post(f"{sidecar.url}/svc/whoami", content=b"who", timeout=30).status_code == 200
    seen = next(s for s in reversed(recorder.seen) if s["path"] == "/whoami")["headers"]
    assert (seen["x-forwarded-for"], seen["x-forwarded-host"], seen["x-forwarded-proto"]) == (
        "127.0.0.1", host, "http")


def test_sidecar_keeps_the_bridges_own_paths(sidecar: Server) -> None:
    assert httpx.get(f"{sidecar.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{sidecar.url}/api/v1/status/unknown").status_code == 404


def test_sidecar_respond_async_then_raw_format_returns_the_backends_bytes(sidecar: Server) -> None:
    payload = bytes(range(256)) * 1000
    accepted = httpx.post(f"{sidecar.url}/svc/blob", content=payload, timeout=30,
                          headers={"Prefer": "respond-async", "Content-Type": "application/octet-stream"})
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    final = httpx.get(f"{sidecar.url}{location}", params={"wait": 20}, timeout=30)
    assert final.json()["result"]["body_encoding"] == "base64"
    raw = httpx.get(f"{sidecar.url}{location}", params={"format": "raw"}, timeout=30)
    assert raw.status_code == 200 and raw.content == payload


@pytest.mark.slow
def test_twenty_mib_binary_body_round_trips_byte_for_byte(sidecar: Server) -> None:
    payload = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    response = httpx.post(f"{sidecar.url}/svc/big", content=payload, timeout=120,
                          headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.content == payload


def test_http_to_queue_alone_accepts_without_any_worker(backend: tuple[Backend, str], tmp_path: Path) -> None:
    with served(OpenHQM(), settings(tmp_path, **proxy_sections(backend[1])), workers=False) as url:
        response = httpx.post(f"{url}/api/v1/submit", json={"payload": {"to": "another system"}})
        assert response.status_code == 202
        stats = httpx.get(f"{url}/api/v1/stats").json()
        assert stats["queues"]["openhqm-requests"]["depth"] == 1
        assert stats["requests"] == {"PENDING": 1}


async def test_queue_to_http_alone_forwards_raw_messages_written_by_another_system(
    backend: tuple[Backend, str], tmp_path: Path
) -> None:
    recorder, url = backend
    bodies = [json.dumps({"event": i}).encode() for i in range(20)]
    config = settings(tmp_path, **proxy_sections(url, default_endpoint="app"))
    async with Runtime(OpenHQM(), config, workers=True, settle_gc=False) as worker:
        for body in bodies:  # "another system" writing raw messages
            await worker.backend.publish("openhqm-requests", body)
        await eventually(lambda: set(bodies) <= {s["body"] for s in recorder.seen if s["path"] == "/"})


def test_callback_name_resolving_to_a_refused_address_is_recorded_on_the_request(
    backend: tuple[Backend, str], tmp_path: Path
) -> None:
    name = socket.gethostname()  # a plain name; `localhost` itself is refused before any lookup
    if not ipaddress.ip_address(socket.gethostbyname(name)).is_loopback:
        pytest.skip(f"this machine's name {name!r} does not resolve to a loopback address")
    sections = proxy_sections(backend[1])
    sections["callbacks"] |= {"allow_hosts": [], "retry": {"max_attempts": 1}}
    with served(OpenHQM(), settings(tmp_path, **sections)) as url:
        server = Server(url)
        body = submit(server, 1, {"endpoint": "echo", "callback_url": f"http://{name}:9/hook"}).json()
        assert body["status"] == "COMPLETED", "a name is not refused at submit: only at delivery"

        def status() -> dict[str, Any]:
            answer: dict[str, Any] = httpx.get(f"{url}/api/v1/status/{body['correlation_id']}").json()
            return answer

        wait_until(lambda: status().get("callback_error"))  # delivery happens after the answer
        assert "127.0.0.1" in status()["callback_error"]


def test_sidecar_reply_carries_one_server_and_one_date_header(sidecar: Server) -> None:
    response = httpx.post(f"{sidecar.url}/svc/once", content=b"x", timeout=30)
    assert response.status_code == 200
    assert len(response.headers.get_list("server")) == 1
    assert len(response.headers.get_list("date")) == 1
