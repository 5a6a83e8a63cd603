"""The worker's small HTTP port: /health, /ready and /metrics, so Kubernetes probes work for workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from openhqm import metrics
from openhqm.backends.base import Backend
from openhqm.config import Settings
from openhqm.results.base import ResultStore
from openhqm.worker.pool import WorkerPool


def health_app(backend: Backend, store: ResultStore, pool: WorkerPool) -> FastAPI:
    api = FastAPI(title="OpenHQM worker", docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": pool.in_flight, "concurrency": pool.concurrency}

    @api.get("/ready")
    async def ready() -> Response:
        broker, results = await backend.health(), await store.health()
        checks = {"queue": {"ok": broker.ok, "detail": broker.detail},
                  "results": {"ok": results.ok, "detail": results.detail}}
        failing = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "ready" if not failing else f"not ready: {', '.join(failing)} unavailable",
                "checks": checks}
        return JSONResponse(body, status_code=503 if failing else 200)

    @api.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return api


class HealthServer(uvicorn.Server):
    """uvicorn without its signal handlers: the worker owns SIGTERM and drains first."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


def health_server(settings: Settings, backend: Backend, store: ResultStore, pool: WorkerPool) -> HealthServer:
    config = uvicorn.Config(health_app(backend, store, pool), host=settings.server.host,
                            port=settings.worker.health_port or 0, log_config=None, access_log=False)
    return HealthServer(config)


@contextlib.asynccontextmanager
async def serving_probes(settings: Settings, backend: Backend, store: ResultStore,
                         pool: WorkerPool) -> AsyncIterator[HealthServer]:
    """The probe port for as long as the block runs (the runtime keeps it open while the pool drains)."""
    server = health_server(settings, backend, store, pool)
    task = asyncio.create_task(server.serve(), name="openhqm-health")
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
