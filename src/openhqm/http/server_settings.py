"""`server.*`: the listener's HTTP server: where it listens, what it accepts, which server runs it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from openhqm.forward.settings import MiB
from openhqm.settings_base import Section


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * MiB, gt=0)
    max_wait_s: float = Field(60.0, ge=0)
    retry_after_s: int = Field(1, ge=0)
    instance_id: str | None = None
    # The HTTP server's limits (http/server_limits.py; docs/operations.md "HTTP server limits").
    limit_concurrency: int | None = Field(None, gt=0, description="connections + requests before 503s")
    backlog: int = Field(2048, gt=0, description="connections waiting to be accepted (listen backlog)")
    timeout_keep_alive_s: int = Field(5, gt=0, description="an idle connection is closed after this")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head must arrive within this")
    h11_max_incomplete_event_size: int = Field(16 * 1024, gt=0, description="max request head bytes (h11)")
    processes: int = Field(1, ge=1, le=256, description="processes serving the port (SO_REUSEPORT); 1: this one")
    # Which HTTP server runs the app (docs/operations.md "HTTP server"): uvicorn, or granian's Rust
    # server (the `granian` extra; http/granian_server.py), which keeps HTTP work off the event loop.
    engine: Literal["uvicorn", "granian"] = Field("uvicorn", description="the HTTP server: uvicorn or granian")
