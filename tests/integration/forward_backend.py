"""A real backend for the Forwarder tests: it records what reached it (headers, concurrency, arrivals)
and plays the roles a test needs (slow, failing, redirecting, OAuth2 token endpoint, ...)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

CLIENT_ID = "client-1"


class Backend:
    def __init__(self, client_secret: str = "client-secret-1") -> None:
        self.client_secret = client_secret
        self.url = ""
        self.reset()
        self.app = Starlette(
            routes=[
                Route("/echo{rest:path}", self.echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
                Route("/bytes", self.bytes_, methods=["POST"]),
                Route("/login", self.login, methods=["GET", "POST"]),
                Route("/status/{code:int}", self.status, methods=["GET", "POST"]),
                Route("/slow", self.slow, methods=["GET", "POST"]),
                Route("/hold", self.hold, methods=["GET", "POST"]),
                Route("/gate", self.gate, methods=["GET", "POST"]),
                Route("/switch", self.switch, methods=["GET", "POST"]),
                Route("/redirect", self.redirect, methods=["GET", "POST"]),
                Route("/stream", self.stream, methods=["GET", "POST"]),
                Route("/sized", self.sized, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/protected", self.protected, methods=["GET", "POST"]),
            ]
        )

    def reset(self) -> None:
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []
        self.failing = True
        self.tokens: list[str] = []
        self.revoked: set[str] = set()
        self.token_lifetime_s = 3600
        self.token_status = 200
        self.token_requests: list[dict[str, str]] = []
        self.seen_tokens: list[str] = []
        self.gate_reached = threading.Event()  # a call is inside /gate (the backend runs in its own thread)
        self.gate_open = threading.Event()

    def _count(self, request: Request) -> None:
        self.hits[request.url.path] += 1

    async def echo(self, request: Request) -> Response:
        self._count(request)
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.scope["raw_path"].decode(),
                "query": request.scope["query_string"].decode(),
                "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    async def login(self, request: Request) -> Response:
        """Answers with a session cookie, as a backend does for the one client that logged in."""
        self._count(request)
        response = JSONResponse({"logged_in": True})
        response.set_cookie("session", "client-a-secret", path="/")
        return response

    async def bytes_(self, request: Request) -> Response:
        self._count(request)
        return Response(await request.body(), media_type="application/octet-stream")

    async def status(self, request: Request) -> Response:
        self._count(request)
        headers = (
            {"Retry-After": request.query_params["retry_after"]}
            if "retry_after" in request.query_params
            else {}
        )
        code = request.path_params["code"]
        return JSONResponse({"status": code}, status_code=code, headers=headers)

    async def slow(self, request: Request) -> Response:
        self._count(request)
        await asyncio.sleep(float(request.query_params.get("s", "2")))
        return PlainTextResponse("late")

    async def hold(self, request: Request) -> Response:
        """Holds the request a moment, counting how many are inside at once."""
        self._count(request)
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(float(request.query_params.get("s", "0.05")))
        finally:
            self.in_flight -= 1
        return PlainTextResponse("held")

    async def gate(self, request: Request) -> Response:
        """Holds every call until the test opens the gate (at most 30 s)."""
        self._count(request)
        self.in_flight += 1
        self.gate_reached.set()
        try:
            await asyncio.to_thread(self.gate_open.wait, 30)
        finally:
            self.in_flight -= 1
        return PlainTextResponse("through")

    async def switch(self, request: Request) -> Response:
        """500 while `failing`, else 200; `delay` keeps the call in flight."""
        self._count(request)
        self.in_flight += 1
        try:
            await asyncio.sleep(float(request.query_params.get("delay", "0")))
        finally:
            self.in_flight -= 1
        return PlainTextResponse("down" if self.failing else "up", status_code=500 if self.failing else 200)

    async def redirect(self, request: Request) -> Response:
        self._count(request)
        code = int(request.query_params.get("code", "302"))
        return RedirectResponse(
            request.query_params.get("to", "/redirect"), status_code=code
        )  # default: a loop

    async def stream(self, request: Request) -> Response:
        self._count(request)
        total = int(request.query_params["n"])

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            while sent < total:
                size = min(65536, total - sent)
                sent += size
                yield b"s" * size

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def sized(self, request: Request) -> Response:
        self._count(request)
        return Response(b"z" * int(request.query_params["n"]), media_type="application/octet-stream")

    async def token(self, request: Request) -> Response:
        """OAuth2 client-credentials token endpoint (RFC 6749 4.4)."""
        self._count(request)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        authorization = request.headers.get("authorization", "")
        self.token_requests.append({**form, "authorization": authorization})
        if authorization.startswith("Basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if self.token_status != 200:
            # A misbehaving token endpoint that echoes the secret it was sent.
            return JSONResponse(
                {"error": "server_error", "error_description": f"bad {secret}"}, status_code=self.token_status
            )
        if form.get("grant_type") != "client_credentials" or (client_id, secret) != (
            CLIENT_ID,
            self.client_secret,
        ):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = f"tok-{len(self.tokens) + 1}"
        self.tokens.append(token)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime_s}
        )

    async def protected(self, request: Request) -> Response:
        self._count(request)
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.seen_tokens.append(token)
        if token not in self.tokens or token in self.revoked:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"token": token})
