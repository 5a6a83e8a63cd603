"""create_app(): the FastAPI app around a Runtime (runtime.py); its lifespan enters and leaves it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from openhqm.app import OpenHQM
from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.http.auth import AuthMiddleware, build_authenticator
from openhqm.http.console import install_console
from openhqm.http.fastpath import FastPath
from openhqm.http.flow_routes import flow_router
from openhqm.http.middleware import BodyLimitMiddleware, MetricsMiddleware
from openhqm.http.openapi import install_docs
from openhqm.http.queue_routes import queue_router, worker_router
from openhqm.http.request_routes import request_router
from openhqm.http.responses import JSONResponse, problem, rejected, unavailable
from openhqm.http.routes import ops_router, router
from openhqm.http.schedule_routes import schedule_router
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
                  description="HTTP to message-queue bridge: submit, poll, long-poll, Prefer: wait. "
                              "Every error answers `application/problem+json` (RFC 9457).",
                  docs_url=None, redoc_url=None)
    install_docs(api, secured=settings.auth.enabled)
    api.state.runtime = runtime
    api.state.bridge = runtime.bridge
    api.include_router(router)
    api.include_router(ops_router)
    api.include_router(schedule_router)
    api.include_router(queue_router)
    api.include_router(worker_router)
    api.include_router(flow_router)
    api.include_router(request_router)
    if settings.console.enabled:
        install_console(api)
    if settings.proxy.enabled and settings.proxy.sidecar.enabled:
        # Last, so the bridge's own paths stay its own under any prefix.
        api.include_router(sidecar_router(settings.proxy.sidecar.prefix))
    api.add_exception_handler(RequestRejected, _rejected)
    api.add_exception_handler(BackendUnavailable, _unavailable)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _internal_error)
    # Innermost: auth, the body limit and metrics apply to the fast path as to every route.
    api.add_middleware(FastPath)
    api.add_middleware(MetricsMiddleware)
    api.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    # Outermost: a request without valid credentials is refused before its body is read.
    api.state.authenticator = authenticator = build_authenticator(settings.auth)
    api.add_middleware(AuthMiddleware, auth=authenticator)
    return api


async def _rejected(request: Request, exc: Any) -> JSONResponse:
    return rejected(exc)


async def _unavailable(request: Request, exc: Any) -> JSONResponse:
    return unavailable(exc)


async def _invalid(request: Request, exc: Any) -> JSONResponse:
    """FastAPI's validation errors as problem details: each location in `errors`, all in `detail`."""
    errors = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
    detail = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in errors)
    return problem(422, detail or "invalid request", errors=errors)


async def _http_error(request: Request, exc: Any) -> JSONResponse:
    detail, headers = str(exc.detail), exc.headers
    if exc.status_code in (404, 405):  # the framework's bare "Not Found": say what was not found
        detail = f"{detail}: {request.method} {request.url.path}"
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
    return problem(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers (RFC 9110: `Allow` on a 405). Starlette names only those of the
    first route matching the path, and e.g. GET and DELETE /api/v1/dlq are two routes. Mounts (the
    docs assets) match any method and answer their own 405s, so they are left out."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return ", ".join(method for method in HTTP_METHODS if any(
        route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes))


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception itself goes to the server's log (Starlette re-raises it after this answer);
    # the client learns nothing of the internals.
    return problem(500, "internal server error; the server's log has the details")
