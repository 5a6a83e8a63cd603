"""Readiness for both HTTP faces, and the worker's small HTTP port (/health, /ready, /metrics), so
Kubernetes probes work for workers too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from openhqm import metrics
from openhqm.backends.base import Backend, Health
from openhqm.config import Settings
from openhqm.http.responses import JSONResponse
from openhqm.results.base import ResultStore


class Pool(Protocol):
    """What /health reports of the worker pool (openhqm.worker.pool.WorkerPool)."""

    @property
    def in_flight(self) -> int: ...

    concurrency: int


def readiness(broker: Health, results: Health) -> JSONResponse:
    """Ready when the broker and the result store both answer within their timeouts."""
    checks = {"queue": {"ok": broker.ok, "detail": broker.detail},
              "results": {"ok": results.ok, "detail": results.detail}}
    failing = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "ready" if not failing else f"not ready: {', '.join(failing)} unavailable", "checks": checks}
    return JSONResponse(body, status_code=503 if failing else 200)


def health_app(backend: Backend, store: ResultStore, pool: Pool) -> FastAPI:
    api = FastAPI(title="OpenHQM worker", docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": pool.in_flight, "concurrency": pool.concurrency}

    @api.get("/ready")
    async def ready() -> Response:
        return readiness(await backend.health(), await store.health())

    @api.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return api


class HealthServer(uvicorn.Server):
    """uvicorn without its signal handlers: the worker owns SIGTERM and drains first."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


def health_server(settings: Settings, backend: Backend, store: ResultStore, pool: Pool) -> HealthServer:
    config = uvicorn.Config(health_app(backend, store, pool), host=settings.server.host,
                            port=settings.worker.health_port or 0, log_config=None, access_log=False)
    return HealthServer(config)


@contextlib.asynccontextmanager
async def serving_probes(settings: Settings, backend: Backend, store: ResultStore,
                         pool: Pool) -> AsyncIterator[HealthServer]:
    """The probe port for as long as the block runs (the runtime keeps it open while the pool drains)."""
    server = health_server(settings, backend, store, pool)
    task = asyncio.create_task(server.serve(), name="openhqm-health")
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
