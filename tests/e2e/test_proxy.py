"""Proxy and sidecar mode through real processes: openhqm serve/listener/worker and a real HTTP
backend on 127.0.0.1. Covers HTTP -> queue -> HTTP, HTTP -> queue alone, queue -> HTTP alone."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openhqm.backends import create_backend
from openhqm.config import Settings
from openhqm.forward import verify
from tests.integration.http_servers import serve
from tests.processes import OpenHQMProcess

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


def proxy_env(url: str, tmp: Path) -> dict[str, str]:
    endpoints = {
        "echo": {"url": f"{url}/echo", "auth": {"type": "bearer", "token": CANARY}},
        "flaky": {"url": f"{url}/flaky", "retry": {"max_attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}},
        "missing": {"url": f"{url}/missing"},
        "down": {"url": f"{url}/down", "auth_type": "bearer", "auth_token": CANARY,
                 "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}},
        "app": {"url": url, "max_response_bytes": 64 * 1024 * 1024},
    }
    return {
        "OPENHQM_PROXY__ENABLED": "true",
        "OPENHQM_PROXY__ENDPOINTS": json.dumps(endpoints),
        "OPENHQM_PROXY__DEFAULT_ENDPOINT": "echo",
        "OPENHQM_SERVER__MAX_BODY_BYTES": str(64 * 1024 * 1024),
        "OPENHQM_CALLBACKS__ENABLED": "true",
        "OPENHQM_CALLBACKS__SECRET": CALLBACK_SECRET,
        "OPENHQM_CALLBACKS__ALLOW_HOSTS": '["127.0.0.1"]',
        "OPENHQM_LOGGING__LEVEL": "DEBUG",
    }


@pytest.fixture(scope="module")
def proxy(backend: tuple[Backend, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenHQMProcess]:
    tmp = tmp_path_factory.mktemp("proxy")
    process = OpenHQMProcess("serve", tmp, proxy_env(backend[1], tmp)).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sidecar(backend: tuple[Backend, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenHQMProcess]:
    tmp = tmp_path_factory.mktemp("sidecar")
    env = {**proxy_env(backend[1], tmp), "OPENHQM_PROXY__DEFAULT_ENDPOINT": "app",
           "OPENHQM_PROXY__SIDECAR__ENABLED": "true", "OPENHQM_PROXY__SIDECAR__PREFIX": "/svc",
           "OPENHQM_PROXY__SIDECAR__WAIT_S": "20"}
    process = OpenHQMProcess("serve", tmp, env).start()
    yield process
    process.stop()


def submit(server: OpenHQMProcess, payload: Any, metadata: dict[str, Any], wait: float = 20,
           headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/submit", json={"payload": payload, "metadata": metadata,
                      "headers": headers or {}}, headers={"Prefer": f"wait={wait:g}"}, timeout=60)


def test_forwarded_request_returns_the_backends_answer_as_result(proxy: OpenHQMProcess,
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


def test_default_endpoint_takes_requests_that_name_none(proxy: OpenHQMProcess) -> None:
    body = submit(proxy, [1, 2], {}).json()
    assert body["result"]["body"] == [1, 2]


def test_unknown_endpoint_is_refused_at_submit_listing_valid_names(proxy: OpenHQMProcess) -> None:
    response = submit(proxy, 1, {"endpoint": "ehco"})
    assert response.status_code == 400
    assert "ehco" in response.json()["detail"] and "echo" in response.json()["detail"]


def test_backend_4xx_is_a_completed_request_carrying_it(proxy: OpenHQMProcess) -> None:
    body = submit(proxy, 1, {"endpoint": "missing"}).json()
    assert body["status"] == "COMPLETED"
    assert body["result"]["status_code"] == 404 and body["result"]["body"] == {"error": "nope"}


def test_retryable_status_is_retried_until_the_backend_recovers(proxy: OpenHQMProcess,
                                                                backend: tuple[Backend, str]) -> None:
    recorder, _ = backend
    recorder.flaky_left = 2
    body = submit(proxy, {"x": 1}, {"endpoint": "flaky"}).json()
    assert body["status"] == "COMPLETED" and body["attempts"] == 3
    assert body["result"]["status_code"] == 200


def test_exhausted_retries_fail_and_dead_letter_without_leaking_credentials(proxy: OpenHQMProcess) -> None:
    body = submit(proxy, {"x": 2}, {"endpoint": "down"}).json()
    assert body["status"] == "FAILED" and body["attempts"] == 2
    assert "503" in body["error"]
    status = httpx.get(f"{proxy.url}/api/v1/status/{body['correlation_id']}").text
    dead = httpx.get(f"{proxy.url}/api/v1/dlq").text
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert body["correlation_id"] in dead
    for text in (json.dumps(body), status, dead, metrics, proxy.log()):
        assert CANARY not in text
    assert 'openhqm_upstream_requests_total{endpoint="down",status_class="5xx"}' in metrics


def test_result_callback_is_signed_and_verifiable(proxy: OpenHQMProcess, backend: tuple[Backend, str]) -> None:
    recorder, url = backend
    before = len(recorder.callbacks)
    body = submit(proxy, {"cb": 1}, {"endpoint": "echo", "callback_url": f"{url}/callback"}).json()
    for _ in range(100):
        if len(recorder.callbacks) > before:
            break
        asyncio.run(asyncio.sleep(0.05))  # the callback is sent after the answer; give it a moment
    headers, raw = recorder.callbacks[-1]
    verify(CALLBACK_SECRET, headers, raw)
    delivered = json.loads(raw)
    assert delivered["correlation_id"] == body["correlation_id"] and delivered["status"] == "COMPLETED"
    assert headers["webhook-id"] == body["correlation_id"]


def test_callback_to_a_private_address_is_refused_at_submit(proxy: OpenHQMProcess) -> None:
    response = submit(proxy, 1, {"endpoint": "echo", "callback_url": "http://169.254.169.254/latest"})
    assert response.status_code == 400
    assert "169.254.169.254" in response.json()["detail"]


def test_sidecar_replays_method_path_query_and_returns_the_backends_response(
    sidecar: OpenHQMProcess, backend: tuple[Backend, str]
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
    proxy: OpenHQMProcess, backend: tuple[Backend, str]
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
    sidecar: OpenHQMProcess, backend: tuple[Backend, str]
) -> None:
    recorder, _ = backend
    host = sidecar.url.removeprefix("http://")
    assert httpx.post(f"{sidecar.url}/svc/whoami", content=b"who", timeout=30).status_code == 200
    seen = next(s for s in reversed(recorder.seen) if s["path"] == "/whoami")["headers"]
    assert (seen["x-forwarded-for"], seen["x-forwarded-host"], seen["x-forwarded-proto"]) == (
        "127.0.0.1", host, "http")


def test_sidecar_keeps_the_bridges_own_paths(sidecar: OpenHQMProcess) -> None:
    assert httpx.get(f"{sidecar.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{sidecar.url}/api/v1/status/unknown").status_code == 404


def test_sidecar_respond_async_then_raw_format_returns_the_backends_bytes(sidecar: OpenHQMProcess) -> None:
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
def test_twenty_mib_binary_body_round_trips_byte_for_byte(sidecar: OpenHQMProcess) -> None:
    payload = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    response = httpx.post(f"{sidecar.url}/svc/big", content=payload, timeout=120,
                          headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.content == payload


def test_http_to_queue_alone_accepts_without_any_worker(backend: tuple[Backend, str], tmp_path: Path) -> None:
    listener = OpenHQMProcess("listener", tmp_path, proxy_env(backend[1], tmp_path)).start()
    try:
        response = httpx.post(f"{listener.url}/api/v1/submit", json={"payload": {"to": "another system"}})
        assert response.status_code == 202
        stats = httpx.get(f"{listener.url}/api/v1/stats").json()
        assert stats["queues"]["openhqm-requests"]["depth"] == 1
        assert stats["requests"] == {"PENDING": 1}
    finally:
        listener.stop()


async def test_queue_to_http_alone_forwards_raw_messages_written_by_another_system(
    backend: tuple[Backend, str], tmp_path: Path
) -> None:
    recorder, url = backend
    env = {**proxy_env(url, tmp_path), "OPENHQM_PROXY__DEFAULT_ENDPOINT": "app"}
    bodies = [json.dumps({"event": i}).encode() for i in range(20)]
    producer = create_backend(Settings(data_dir=tmp_path))  # "another system" writing raw messages
    await producer.connect()
    for body in bodies:
        await producer.publish("openhqm-requests", body)
    await producer.close()
    worker = OpenHQMProcess("worker", tmp_path, env).start()
    try:
        for _ in range(400):
            got = {s["body"] for s in recorder.seen if s["path"] == "/"}
            if set(bodies) <= got:
                break
            await asyncio.sleep(0.05)  # the worker is another process; watch the backend
        assert set(bodies) <= {s["body"] for s in recorder.seen if s["path"] == "/"}
    finally:
        worker.stop()


def test_callback_name_resolving_to_a_refused_address_is_recorded_on_the_request(
    backend: tuple[Backend, str], tmp_path: Path
) -> None:
    name = socket.gethostname()  # a plain name; `localhost` itself is refused before any lookup
    if not ipaddress.ip_address(socket.gethostbyname(name)).is_loopback:
        pytest.skip(f"this machine's name {name!r} does not resolve to a loopback address")
    env = {**proxy_env(backend[1], tmp_path), "OPENHQM_CALLBACKS__ALLOW_HOSTS": "[]",
           "OPENHQM_CALLBACKS__RETRY__MAX_ATTEMPTS": "1"}
    server = OpenHQMProcess("serve", tmp_path, env).start()
    try:
        body = submit(server, 1, {"endpoint": "echo", "callback_url": f"http://{name}:9/hook"}).json()
        assert body["status"] == "COMPLETED", "a name is not refused at submit: only at delivery"
        status: dict[str, Any] = {}
        for _ in range(100):
            status = httpx.get(f"{server.url}/api/v1/status/{body['correlation_id']}").json()
            if status.get("callback_error"):
                break
            time.sleep(0.05)  # delivery happens after the answer
        assert status["callback_error"] and "127.0.0.1" in status["callback_error"]
    finally:
        server.stop()
