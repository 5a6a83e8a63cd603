"""A tiny HTTP backend for the docker-compose demo: answers every request with what it received.

Standard library only, so it runs in the plain python image. Two request headers make failures easy to
try against OpenHQM's retries and circuit breaker:
  X-Echo-Status: 503     answer with this status
  X-Echo-Delay-Ms: 1500  wait this long first (capped at 60 s)
GET /health answers 200 for the container healthcheck.

    PORT=8080 python examples/docker-compose/echo_backend.py
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_DELAY_S = 60.0


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "openhqm-echo/1"

    def _answer(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        delay_s = min(float(self.headers.get("X-Echo-Delay-Ms") or 0) / 1000, MAX_DELAY_S)
        if delay_s > 0:
            time.sleep(delay_s)
        url = urlsplit(self.path)
        self._send(
            int(self.headers.get("X-Echo-Status") or 200),
            {
                "method": self.command,
                "path": url.path,
                "query": parse_qs(url.query),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", errors="replace"),
            },
        )

    def _send(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"echo {self.address_string()} {format % args}\n")


def main() -> None:
    host = os.environ.get("HOST", "0.0.0.0")
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((host, port), EchoHandler)
    server.daemon_threads = True
    # docker stop sends SIGTERM: leave serve_forever() cleanly instead of being killed after the grace
    # period. shutdown() waits for the serving loop, so it must run outside this (the loop's) thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"echo backend listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
