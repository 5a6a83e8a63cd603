"""`POST /api/v1/submit` without the framework's per-request machinery, when none of it is needed.

FastAPI's routing, dependency solving and JSON body handling took about a sixth of the CPU of a
round trip (py-spy, see docs/benchmarks.md). A JSON submit is parsed and validated here in one step
with the same pydantic model (`model_validate_json`), handed to the same route code, and answered
with the same response objects. Anything this does not handle exactly like the route -- another
content type, an empty body, a body that does not validate -- continues to the FastAPI route with
its body replayed, so every error answer is the framework's own.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.http.responses import rejected, unavailable
from openhqm.http.routes import answer_submit, router
from openhqm.http.schemas import SubmitRequest

SUBMIT_PATH = "/api/v1/submit"
_SUBMIT_ROUTE = next(r for r in router.routes if getattr(r, "path", None) == SUBMIT_PATH)


class SubmitFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SUBMIT_PATH or scope["method"] != "POST" \
                or not _declares_json(scope):
            await self.app(scope, receive, send)
            return
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
        scope["router"] = scope["app"].router  # for url_for (the Location header)
        scope["route"] = _SUBMIT_ROUTE  # the metrics' route label, as the router would set it
        try:
            response = await answer_submit(parsed, Request(scope, receive))
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
