"""OpenHQM: the Python API for handlers, middleware and lifecycle hooks.

    app = OpenHQM()

    @app.handler("resize")
    async def resize(job: Job) -> dict[str, int]:
        return {"width": job.payload["width"] // 2}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from openhqm.config import RetrySettings, Settings, load_settings
from openhqm.worker.handlers import HandlerFunc, HandlerRegistry
from openhqm.worker.middleware import LoggingMiddleware, Middleware

F = TypeVar("F", bound=Callable[..., Any])


class OpenHQM:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.handlers = HandlerRegistry()
        self.middleware: list[Middleware] = [LoggingMiddleware()]
        self.hooks: dict[str, list[Callable[..., Any]]] = {}

    def handler(self, name: str, *, retry: RetrySettings | dict[str, Any] | None = None,
                timeout_s: float | None = None) -> Callable[[F], F]:
        """Register an async or sync function as the handler called `name`."""
        policy = RetrySettings(**retry) if isinstance(retry, dict) else retry

        def decorate(func: F) -> F:
            self.handlers.register(name, func, retry=policy, timeout_s=timeout_s)
            return func

        return decorate

    def add_handler(self, name: str, func: HandlerFunc, **options: Any) -> None:
        self.handler(name, **options)(func)

    def add_middleware(self, middleware: Middleware) -> None:
        self.middleware.append(middleware)

    def on(self, event: str) -> Callable[[F], F]:
        """Register a hook for a lifecycle event (`completed`, `failed`, `retry`, ...)."""

        def decorate(func: F) -> F:
            self.hooks.setdefault(event.upper(), []).append(func)
            return func

        return decorate
