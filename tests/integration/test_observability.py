"""What an operator reads from /metrics: which handler or endpoint a message went to, and no
`_created` series."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openhqm import metrics
from openhqm.envelope import Envelope
from openhqm.routing import Routing
from openhqm.worker.handlers import HandlerRegistry
from tests.harness import Sample, in_process, settings
from tests.integration.http_servers import serve


@pytest.fixture(scope="module")
def backend_url() -> Iterator[str]:
    async def answer(request: Request) -> Response:
        return JSONResponse({"ok": True})

    with serve(Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])) as url:
        yield url


async def test_metrics_name_the_handler_and_the_endpoint_and_have_no_created_series(
    tmp_path: Path, backend_url: str
) -> None:
    proxy: dict[str, Any] = {"enabled": True, "default_endpoint": "billing",
                             "endpoints": {"billing": {"url": f"{backend_url}/work"}}}
    config = settings(tmp_path, proxy=proxy)
    async with in_process(Sample().app, config) as hq:
        forwarded = await hq.client.post("/api/v1/submit", json={"payload": {"x": 1}},
                                         headers={"Prefer": "wait=20"})
        handled = await hq.client.post("/api/v1/submit", json={"payload": {"x": 2}, "metadata": {"handler": "record"}},
                                       headers={"Prefer": "wait=20"})
        assert forwarded.json()["status"] == handled.json()["status"] == "COMPLETED"
        queue = config.queue.request_queue
        expected = [
            f'openhqm_messages_total{{endpoint="billing",handler="",outcome="completed",queue="{queue}"}}',
            f'openhqm_messages_total{{endpoint="",handler="record",outcome="completed",queue="{queue}"}}',
            f'openhqm_processing_duration_seconds_count{{endpoint="billing",handler="",queue="{queue}"}}',
            f'openhqm_processing_duration_seconds_count{{endpoint="",handler="record",queue="{queue}"}}',
        ]
        async with asyncio.timeout(10):
            # Counted just after the stored reply woke the wait: no event to await, so scrape again.
            text = (await hq.client.get("/metrics")).text
            while not all(line in text for line in expected):
                await asyncio.sleep(0.01)
                text = (await hq.client.get("/metrics")).text
    assert "_created" not in text


def test_a_target_the_configuration_does_not_know_gets_empty_labels() -> None:
    handlers = HandlerRegistry()
    handlers.register("known", lambda job: None)  # never run: only its name matters
    routing = Routing(handlers, "known")
    assert metrics.target_labels(Envelope(id="1", handler="known"), routing) == ("known", "")
    assert metrics.target_labels(Envelope(id="2", handler="sent-by-anyone-7"), routing) == ("", "")
    assert metrics.target_labels(Envelope(id="3", endpoint="no-proxy-mode"), routing) == ("", "")
    assert metrics.target_labels(None, routing) == ("", "")
