"""Pure ASGI middleware (contextvars survive, unlike BaseHTTPMiddleware): body limit and metrics."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openhqm import metrics
from openhqm.http.responses import PROBLEM_JSON, problem_body


def _json_error(status: int, detail: str) -> list[Message]:
    body = orjson.dumps(problem_body(status, detail))
    return [
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                     (b"connection", b"close")]},
        {"type": "http.response.body", "body": body},
    ]


class BodyLimitMiddleware:
    """Answer 413 as soon as a body is known to exceed `max_bytes`, without reading the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body exceeds server.max_body_bytes ({self.max_bytes} bytes)"
        declared_within_limit = chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                if int(value) > self.max_bytes:
                    for message in _json_error(413, detail):
                        await send(message)
                    return
                declared_within_limit = True
            elif name == b"transfer-encoding":
                chunked = True
        if declared_within_limit and not chunked:
            # The server reads exactly Content-Length bytes, and that is within the limit.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused, started
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    # Answer now and tell the app the client went away (frameworks swallow
                    # exceptions raised while they read a body, so raising would not stop them).
                    refused = started = True
                    for reply in _json_error(413, detail):
                        await send(reply)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)


class MetricsMiddleware:
    """Counts requests by route template (never a raw id), method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            metrics.child(metrics.HTTP_REQUESTS, template, method, str(status)).inc()
            metrics.child(metrics.HTTP_DURATION, template, method).observe(time.perf_counter() - started)
