"""`server.engine: granian`: the app on granian's Rust server in this test's event loop, on a real
socket (port 0). What `openhqm serve` on granian promises: the API as on uvicorn, the header deadline,
a stop that lets a waiting request finish before the runtime drains."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from openhqm.errors import MissingDependency
from openhqm.http import granian_server
from openhqm.http.app import create_app
from openhqm.http.shared_port import bound_port, bound_socket
from tests.harness import Sample, settings

pytest.importorskip("granian", reason="the granian extra is not installed")


@dataclass
class Served:
    url: str
    stop: asyncio.Event
    serving: asyncio.Task[None]

    async def stopped(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.serving), 60)

    async def refuses_connections(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        async with asyncio.timeout(20):
            while True:
                try:
                    _, writer = await asyncio.open_connection(host, int(port))
                except ConnectionRefusedError:
                    return
                writer.close()
                await asyncio.sleep(0.01)


@asynccontextmanager
async def on_granian(sample: Sample, tmp_path: Path, **server: object) -> AsyncIterator[Served]:
    """`sample.app` served by granian in this loop until the block ends (or `stopped()`)."""
    config = settings(tmp_path, server={"engine": "granian", **server})
    sample.app.settings = config
    api = create_app(sample.app, run_workers=True, settle_gc=False)
    sock = bound_socket("127.0.0.1", 0, shared=False)
    listening, stop = asyncio.Event(), asyncio.Event()
    served = Served(f"http://127.0.0.1:{bound_port(sock)}", stop,
                    asyncio.create_task(granian_server.serve(api, config, sock, listening.set, stop)))
    try:
        await asyncio.wait_for(listening.wait(), 30)
        yield served
    finally:
        await served.stopped()
        sock.close()


async def test_granian_serves_the_api_and_answers_a_waiting_submit(tmp_path: Path) -> None:
    sample = Sample()
    async with on_granian(sample, tmp_path) as served, httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        answer = await http.post("/api/v1/submit", json={"payload": {"n": 1}, "metadata": {"handler": "record"}},
                                 headers={"Prefer": "wait=20"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "COMPLETED" and answer.json()["result"] == {"n": 1}
        assert (await http.get("/ready")).status_code == 200
        bad = await http.post("/api/v1/submit", content=b"{", headers={"Content-Type": "application/json"})
        assert bad.status_code == 422 and "json" in bad.text.lower()


async def test_a_request_head_not_complete_within_header_timeout_is_disconnected(tmp_path: Path) -> None:
    sample = Sample()
    async with on_granian(sample, tmp_path, header_timeout_s=0.5) as served:
        host, port = served.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /health HTTP/1.1\r\nHost: x")  # and nothing more: a slowloris
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        async with httpx.AsyncClient(base_url=served.url) as http:
            assert (await http.get("/health")).status_code == 200  # others are still served


async def test_a_stop_lets_a_waiting_request_finish_before_the_runtime_drains(tmp_path: Path) -> None:
    sample = Sample()
    async with on_granian(sample, tmp_path) as served, httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        waiting = asyncio.create_task(http.post(
            "/api/v1/submit", json={"payload": {"name": "held", "hold": True}, "metadata": {"handler": "record"}},
            headers={"Prefer": "wait=20"}))
        await asyncio.wait_for(sample.event("started", "held").wait(), 20)
        stopping = asyncio.create_task(served.stopped())
        await served.refuses_connections()  # stopped accepting, with the waiting request still open
        sample.event("release", "held").set()
        answer = await waiting
        assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED"
        await stopping
        assert [run.name for run in sample.runs] == ["held"]


def test_granian_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "granian.server", None)  # as if the extra were not installed
    with pytest.raises(MissingDependency, match=r"openhqm\[granian\]"):
        granian_server.require_granian()


async def test_an_open_event_stream_ends_at_the_stop_instead_of_holding_the_drain(tmp_path: Path) -> None:
    sample = Sample()
    async with on_granian(sample, tmp_path) as served, httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        submitted = await http.post("/api/v1/submit", json={"payload": 1, "metadata": {"delay_s": 600}})
        path = f"/api/v1/requests/{submitted.json()['correlation_id']}/events"
        async with aconnect_sse(http, "GET", path) as source:
            events = source.aiter_sse()
            first = await anext(events)  # SCHEDULED: the stream is open and would stay open
            assert first.event == "status"
            stopping = asyncio.create_task(served.stopped())
            rest = [event async for event in events]  # ends when the server says so, without an error
        assert all(event.event != "status" for event in rest)
        await stopping
