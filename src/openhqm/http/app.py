"""create_app(): the FastAPI app around a Runtime (runtime.py); its lifespan enters and leaves it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from openhqm.app import OpenHQM
from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.http.auth import SECURITY_SCHEMES, AuthMiddleware, build_authenticator
from openhqm.http.fastpath import FastPath
from openhqm.http.middleware import BodyLimitMiddleware, MetricsMiddleware
from openhqm.http.responses import JSONResponse, rejected, unavailable
from openhqm.http.routes import ops_router, router
from openhqm.http.sidecar import sidecar_router
from openhqm.logging import get_logger
from openhqm.runtime import Runtime

log = get_logger("openhqm.listener")


def create_app(app: OpenHQM, *, run_workers: bool = False, settle_gc: bool = True) -> FastAPI:
    """The listener's HTTP API; with `run_workers`, the worker pool in the same process (`serve`).

    `api.state.runtime` is the Runtime the lifespan runs; a test driving the app through
    httpx.ASGITransport (which runs no lifespan) enters it itself."""
    runtime = Runtime(app, listener=True, workers=run_workers, settle_gc=settle_gc)
    settings = runtime.settings

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with runtime:
            log.info("listener ready", queue=runtime.backend.display_url, results=runtime.store.name,
                     workers=run_workers)
            yield

    api = FastAPI(title="OpenHQM", version="0.1.0", lifespan=lifespan, default_response_class=JSONResponse,
                  description="HTTP to message-queue bridge: submit, poll, long-poll, Prefer: wait.")
    api.state.runtime = runtime
    api.state.bridge = runtime.bridge
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
