"""The two hottest routes without the framework's per-request machinery, when none of it is needed.

FastAPI's routing, dependency solving and JSON body handling took about a third of the CPU of a
`Prefer: wait` round trip (py-spy, see docs/benchmarks.md). `POST /api/v1/submit` with a JSON body
is parsed and validated here in one step with the same pydantic model (`model_validate_json`), and
`GET /api/v1/response/{id}` with plain `wait`/`format` values is answered directly; both run the
routes' own code (`answer_submit`, `answer_response`) and send the same response objects. Anything
not handled exactly like the route -- another content type, an empty or invalid body, an unusual
query -- continues to the FastAPI route (with the body replayed), so every validation error, and
the OpenAPI document, stay the framework's own; the bridge's refusals answer the same problem
details as on the route (`rejected`, `unavailable` in http/responses.py).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openhqm import stages
from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.http.responses import rejected, unavailable
from openhqm.http.routes import answer_response, answer_submit, router
from openhqm.http.schemas import SubmitRequest

SUBMIT_PATH = "/api/v1/submit"
RESPONSE_PREFIX = "/api/v1/response/"
_NUMBER = re.compile(r"\d{1,9}(\.\d{1,9})?")


def _route(path: str) -> Any:
    return next(r for r in router.routes if getattr(r, "path", None) == path)


_SUBMIT_ROUTE = _route(SUBMIT_PATH)
_RESPONSE_ROUTE = _route(RESPONSE_PREFIX + "{correlation_id}")


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == SUBMIT_PATH and _declares_json(scope):
                await self._submit(scope, receive, send)
                return
            if method == "GET" and path.startswith(RESPONSE_PREFIX):
                answer = _response_answer(scope)
                if answer is not None:
                    await _respond(scope, receive, send, _RESPONSE_ROUTE, answer)
                    return
        await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        stages.received()
        body = await _read_body(receive)
        if body is None:
            return  # the client went away (or the body limit already answered 413)
        try:
            parsed = SubmitRequest.model_validate_json(body) if body else None
        except ValidationError:
            parsed = None
        if parsed is None:
            await self.app(scope, _replaying(body, receive), send)
            return
        await _respond(scope, receive, send, _SUBMIT_ROUTE, lambda request: answer_submit(parsed, request))
        stages.responded()


Answer = Callable[[Request], Awaitable[Response]]


def _response_answer(scope: Scope) -> Answer | None:
    """The answer for GET /api/v1/response/{id}, or None when the framework should parse it."""
    correlation_id = scope["path"][len(RESPONSE_PREFIX):]
    if not correlation_id or "/" in correlation_id:
        return None
    params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    values = dict(params)
    if len(values) != len(params):
        return None  # a repeated parameter
    wait, format = values.get("wait"), values.get("format")
    if (wait is not None and not _NUMBER.fullmatch(wait)) or format not in (None, "json", "raw"):
        return None
    scope["path_params"] = {"correlation_id": correlation_id}
    return lambda request: answer_response(correlation_id, request, float(wait) if wait else None, format)


async def _respond(scope: Scope, receive: Receive, send: Send, route: Any, answer: Answer) -> None:
    scope["router"] = scope["app"].router  # for url_for (the Location header)
    scope["route"] = route  # the metrics' route label, as the router would set it
    try:
        response = await answer(Request(scope, receive))
    except RequestRejected as exc:
        response = rejected(exc)
    except BackendUnavailable as exc:
        response = unavailable(exc)
    await response(scope, receive, send)


def _declares_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then whatever the client sends next."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
