"""What operators rely on that needs processes of their own: metrics of a fresh process (the registry
is process-wide), correlation ids in every process's log, spans exported by a process's global
tracer, a worker's probe port and its exit when idle. The rest is in tests/integration/test_operations.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.e2e.conftest import SAMPLE_ENV
from tests.integration.http_servers import serve
from tests.processes import OpenHQMProcess
from tests.services import free_port

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.spans: list[bytes] = []

    async def backend(self, request: Request) -> Response:
        self.requests.append(dict(request.headers))
        return JSONResponse({"ok": True})

    async def collector(self, request: Request) -> Response:
        self.spans.append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.collector, methods=["POST"]),
                                 Route("/{path:path}", self.backend, methods=["POST", "GET"])])


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    with serve(rec.app()) as url:
        yield rec, url


def proxy_env(url: str, **extra: str) -> dict[str, str]:
    return {**SAMPLE_ENV, "OPENHQM_PROXY__ENABLED": "true", "OPENHQM_PROXY__DEFAULT_ENDPOINT": "backend",
            "OPENHQM_PROXY__ENDPOINTS": json.dumps({"backend": {"url": f"{url}/work"}}), **extra}


def submit(server: OpenHQMProcess, headers: dict[str, str] | None = None, **metadata: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/api/v1/submit", json={"payload": {"x": 1}, "metadata": metadata},
                          headers={"Prefer": "wait=20", **(headers or {})}, timeout=30)
    body: dict[str, Any] = response.json()
    return body


def test_metrics_have_bounded_labels_after_real_traffic(tmp_path: Path) -> None:
    server = OpenHQMProcess("serve", tmp_path, SAMPLE_ENV).start()
    try:
        for _ in range(5):
            cid = submit(server)["correlation_id"]
            httpx.get(f"{server.url}/api/v1/status/{cid}")
            httpx.get(f"{server.url}/api/v1/response/{cid}")
        for i in range(20):
            httpx.get(f"{server.url}/no/such/path/{i}")
        submit(server, handler="give_up")
        deadline = time.monotonic() + 30
        text = httpx.get(f"{server.url}/metrics").text
        while 'openhqm_results{status="COMPLETED"} 5.0' not in text:  # the store gauges are sampled every 5 s
            assert time.monotonic() < deadline, "the gauges were not sampled"
            time.sleep(0.2)
            text = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    routes = set(re.findall(r'openhqm_http_requests_total\{[^}]*route="([^"]+)"', text))
    assert routes <= {"/api/v1/submit", "/api/v1/status/{correlation_id}", "/api/v1/response/{correlation_id}",
                      "/metrics", "/ready", "/health", "unmatched"}
    assert "/api/v1/response/{correlation_id}" in routes and "unmatched" in routes
    assert ('openhqm_messages_total{endpoint="",handler="echo",outcome="completed",queue="openhqm-requests"} 5.0'
            in text)
    assert ('openhqm_messages_total{endpoint="",handler="give_up",outcome="dead_lettered",queue="openhqm-requests"}'
            ' 1.0' in text)
    assert 'openhqm_queue_depth{queue="openhqm-requests"} 0.0' in text
    assert 'openhqm_results{status="COMPLETED"} 5.0' in text
    assert "openhqm_processing_duration_seconds_bucket" in text
    assert "openhqm_inflight" in text and "openhqm_queue_oldest_age_seconds" in text


def test_correlation_id_appears_in_listener_worker_and_forwarder_logs(
    tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    listener = OpenHQMProcess("listener", tmp_path, proxy_env(recorder[1])).start()
    worker = OpenHQMProcess("worker", tmp_path, proxy_env(recorder[1])).start()
    try:
        body = submit(listener)
        assert body["status"] == "COMPLETED"
    finally:
        worker.stop()  # stopping flushes the last log lines to the files
        listener.stop()
    cid = body["correlation_id"]

    def lines(process: OpenHQMProcess) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
        return [p for p in parsed if p.get("correlation_id") == cid]

    assert any(line["event"] == "request queued" and line["level"] == "info" for line in lines(listener))
    worker_events = {line["event"] for line in lines(worker)}
    assert {"job started", "forwarded", "job completed"} <= worker_events
    assert all(line.get("endpoint") == "backend" for line in lines(worker))


def test_worker_span_is_a_child_of_the_callers_trace_when_tracing_is_on(
    tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    rec, url = recorder
    env = proxy_env(url, OPENHQM_TRACING__ENABLED="true", OPENHQM_TRACING__OTLP_ENDPOINT=url)
    server = OpenHQMProcess("serve", tmp_path, env).start()
    try:
        assert submit(server, {"traceparent": TRACEPARENT})["status"] == "COMPLETED"
    finally:
        server.stop()  # flushes the span batch
    sent = rec.requests[-1]["traceparent"].split("-")
    assert sent[1] == TRACEPARENT.split("-")[1], "same trace"
    assert sent[2] != TRACEPARENT.split("-")[2], "the worker's span is the backend's parent"
    assert any(bytes.fromhex(sent[1]) in spans for spans in rec.spans), "the span was exported over OTLP"


def test_worker_serves_probes_on_its_health_port_and_exits_when_idle(tmp_path: Path) -> None:
    health_port = free_port()  # worker.health_port 0 means "off": the one port picked before binding
    env = {**SAMPLE_ENV, "OPENHQM_WORKER__HEALTH_PORT": str(health_port), "OPENHQM_WORKER__IDLE_EXIT_S": "3"}
    worker = OpenHQMProcess("worker", tmp_path, env).start()
    try:
        base = f"http://127.0.0.1:{health_port}"
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)  # the worker process is starting
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert httpx.get(f"{base}/ready").status_code == 200
        assert "openhqm_worker_concurrency" in httpx.get(f"{base}/metrics").text
        assert worker.wait_exit(30) == 0, "an idle worker exits by itself (scale to zero)"
        assert "idle: exiting" in worker.log()
    finally:
        worker.stop()
