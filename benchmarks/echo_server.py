"""A plain HTTP echo server (raw ASGI on uvicorn): the baseline and the backend for forwarding.

    python benchmarks/echo_server.py PORT [DELAY_S]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn


def make_app(delay_s: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if delay_s:
            await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    uvicorn.run(make_app(delay), host="127.0.0.1", port=port, log_level="warning", access_log=False)
