"""Stage tracing (openhqm/stages.py) through the in-process app: a forwarded `Prefer: wait` submit is
seen at every hop, in order, and the diagnostics route reports it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openhqm import OpenHQM, stages
from tests.harness import in_process, settings
from tests.integration.http_servers import serve


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


@pytest.fixture
def backend_url() -> Iterator[str]:
    with serve(Starlette(routes=[Route("/echo", echo, methods=["POST"])])) as url:
        yield url


@pytest.fixture
def tracing_every_submit() -> Iterator[None]:
    stages.enable(1)
    yield
    stages.enable(0)


@pytest.mark.usefixtures("tracing_every_submit")
async def test_a_forwarded_request_passes_every_stage_in_order(tmp_path: Path, backend_url: str) -> None:
    config = settings(tmp_path, proxy={"enabled": True, "endpoints": {"echo": {"url": f"{backend_url}/echo"}}})
    async with in_process(OpenHQM(), config) as hq:
        answer = await hq.submit({"n": 1}, headers={"Prefer": "wait=10"}, endpoint="echo")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "COMPLETED"
        report = await hq.client.get("/api/v1/stats/stages")
    assert report.status_code == 200
    summary = report.json()
    assert summary["traces"] == 1
    assert [(gap["from"], gap["to"]) for gap in summary["gaps"]] == list(itertools.pairwise(stages.STAGES))


async def test_the_diagnostics_route_says_tracing_is_off(tmp_path: Path) -> None:
    async with in_process(OpenHQM(), settings(tmp_path)) as hq:
        report = await hq.client.get("/api/v1/stats/stages")
    assert report.status_code == 404
    assert "OPENHQM_STAGE_SAMPLE" in report.json()["detail"]
