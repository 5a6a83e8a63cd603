"""Transparent sidecar mode: any request under `proxy.sidecar.prefix` is queued as it came (method,
path, query, headers, raw body) and replayed against the backend; the client gets the backend's
own status, headers and body, or 202 + Location when it takes longer than `proxy.sidecar.wait_s`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from openhqm.bridge import Bridge
from openhqm.constants import Status
from openhqm.envelope import Caller, Envelope
from openhqm.http.prefer import parse_prefer
from openhqm.http.responses import problem, raw_response
from openhqm.http.routes import accepted

BRIDGE_PATHS = ("/api/v1/", "/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Credentials meant for the bridge itself never travel to the backend.
_BRIDGE_CREDENTIALS = frozenset({"x-api-key"})


def sidecar_router(prefix: str) -> APIRouter:
    router = APIRouter()
    base = prefix.rstrip("/")

    @router.api_route(base + "/{path:path}", methods=METHODS, include_in_schema=False)
    async def relay(request: Request) -> Response:
        if is_bridge_path(request.url.path):
            return problem(404, f"no bridge route {request.url.path}")
        bridge: Bridge = request.app.state.bridge
        settings = bridge.settings.proxy.sidecar
        path = request.url.path[len(base):] or "/"
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            if name not in _BRIDGE_CREDENTIALS:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        endpoint, _ = bridge.router.choose(None, None, headers=headers, method=request.method, path=path)
        client = request.client
        submission = Envelope(
            body=await request.body(), content_type=request.headers.get("content-type"), headers=headers,
            endpoint=endpoint, method=request.method, path=path, query=request.url.query or None,
            session_id=request.headers.get("x-session-id"), traceparent=request.headers.get("traceparent"),
            client_id=getattr(request.state, "client_id", None),
            caller=Caller(addr=client.host if client else None, proto=request.url.scheme,
                          host=request.headers.get("host")))
        preferences = parse_prefer(request.headers.getlist("prefer"))
        if settings.respond_async or preferences.respond_async:
            return accepted(request, await bridge.submit(submission), bridge)
        done = await bridge.submit_and_wait(submission, preferences.wait_s or settings.wait_s)
        if not done.terminal:
            return accepted(request, done, bridge)
        if done.status == Status.COMPLETED:
            return raw_response(done)
        # The backend never answered (timeouts, refused connections, open circuit to the end).
        return problem(502, f"the backend gave no answer to request {done.correlation_id} "
                            f"({done.status}): {done.error}", correlation_id=done.correlation_id, error=done.error)

    return router


def is_bridge_path(path: str) -> bool:
    return path.startswith(BRIDGE_PATHS)
