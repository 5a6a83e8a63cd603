"""create_app(): wires settings, backend, store and routes; the lifespan is the one place that
starts and stops them, in a stated order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from openhqm.app import OpenHQM
from openhqm.backends import create_backend
from openhqm.bridge import Bridge
from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.forward import CallbackSender
from openhqm.http.auth import SECURITY_SCHEMES, AuthMiddleware, build_authenticator
from openhqm.http.fastpath import FastPath
from openhqm.http.middleware import BodyLimitMiddleware, MetricsMiddleware
from openhqm.http.responses import JSONResponse, rejected, unavailable
from openhqm.http.routes import ops_router, router
from openhqm.http.sidecar import sidecar_router
from openhqm.logging import get_logger
from openhqm.results import create_store
from openhqm.routing import Routing
from openhqm.runtime import settle_after_startup
from openhqm.tracing import shutdown_tracing
from openhqm.worker.pool import WorkerPool
from openhqm.worker.runner import build_forwarder, build_pool

log = get_logger("openhqm.listener")


def create_app(app: OpenHQM, *, run_workers: bool = False) -> FastAPI:
    settings = app.settings
    backend = create_backend(settings)
    store = create_store(settings)

    forwarder = build_forwarder(app)
    callbacks = CallbackSender(settings.callbacks) if settings.callbacks.enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        await backend.connect()
        await store.connect()
        if forwarder is not None:
            await forwarder.start()
        if callbacks is not None:
            await callbacks.start()
        routing = Routing(app.handlers, settings.worker.default_handler, forwarder)
        bridge = Bridge(app, backend, store, routing, callbacks)
        api.state.bridge = bridge
        store.add_listener(app.dispatch)
        store.add_listener(bridge.rolling.observe)
        tasks = [asyncio.create_task(bridge.consume_replies(), name="openhqm-replies"),
                 asyncio.create_task(bridge.cleanup_forever(), name="openhqm-cleanup"),
                 asyncio.create_task(bridge.sample_metrics_forever(), name="openhqm-metrics")]
        pool: WorkerPool | None = None
        if run_workers:
            pool = build_pool(app, backend, store, forwarder,
                              local_replies={bridge.response_queue: bridge.apply_reply})
            pool.start()
        settle_after_startup()
        log.info("listener ready", queue=backend.display_url, results=store.name, workers=run_workers)
        try:
            yield
        finally:
            # Workers drain first (their replies still need the broker), then the reply consumer
            # stops, then connections close.
            if pool is not None:
                await pool.stop(settings.worker.shutdown_timeout_s)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if callbacks is not None:
                await callbacks.close()
            if forwarder is not None:
                await forwarder.close()
            await store.close()
            await backend.close()
            shutdown_tracing()  # flush the last spans

    api = FastAPI(title="OpenHQM", version="0.1.0", lifespan=lifespan, default_response_class=JSONResponse,
                  description="HTTP to message-queue bridge: submit, poll, long-poll, Prefer: wait.")
    api.include_router(router)
    api.include_router(ops_router)
    if settings.proxy.enabled and settings.proxy.sidecar.enabled:
        # Last, so the bridge's own paths stay its own under any prefix.
        api.include_router(sidecar_router(settings.proxy.sidecar.prefix))
    api.add_exception_handler(RequestRejected, _rejected)
    api.add_exception_handler(BackendUnavailable, _unavailable)
    # Innermost: auth, the body limit and metrics apply to the fast path as to every route.
    api.add_middleware(FastPath)
    api.add_middleware(MetricsMiddleware)
    api.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    # Outermost: a request without valid credentials is refused before its body is read.
    api.add_middleware(AuthMiddleware, auth=build_authenticator(settings.auth))
    if settings.auth.enabled:
        _document_security(api)
    return api


def _document_security(api: FastAPI) -> None:
    """Show the two ways to authenticate in /docs; the AuthMiddleware does the checking."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


async def _rejected(request: Request, exc: Any) -> JSONResponse:
    return rejected(exc)


async def _unavailable(request: Request, exc: Any) -> JSONResponse:
    return unavailable(exc)
