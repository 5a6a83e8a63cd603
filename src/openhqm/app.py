"""OpenHQM: the Python API for handlers, middleware and lifecycle hooks.

    app = OpenHQM()

    @app.handler("resize")
    async def resize(job: Job) -> dict[str, int]:
        return {"width": job.payload["width"] // 2}

Importing a module that creates `OpenHQM()` reads nothing: the settings are bound when a runtime
starts (the `openhqm` commands bind the ones they loaded). Code that reads `app.settings` before
that gets them loaded from the environment and YAML then, once (see `OpenHQM.settings`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from openhqm.background import Background
from openhqm.config import RetrySettings, Settings, load_settings
from openhqm.constants import Status
from openhqm.errors import ConfigError
from openhqm.logging import get_logger
from openhqm.worker.handlers import HandlerFunc, HandlerRegistry
from openhqm.worker.middleware import LoggingMiddleware, Middleware

F = TypeVar("F", bound=Callable[..., Any])
log = get_logger("openhqm.app")


class OpenHQM:
    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self.handlers = HandlerRegistry()
        self.middleware: list[Middleware] = [LoggingMiddleware()]
        self.hooks: dict[str, list[Callable[..., Any]]] = {}
        self._hook_tasks = Background()

    @property
    def settings(self) -> Settings:
        """The settings this app runs with. Bound by `OpenHQM(settings)` or by the runtime (the CLI binds
        what it loaded); read before any binding, they are loaded from the environment and YAML at
        that moment (lazily, never at import) and kept."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings

    def handler(self, name: str, *, retry: RetrySettings | dict[str, Any] | None = None,
                timeout_s: float | None = None, batch_size: int | None = None,
                batch_wait_s: float | None = None) -> Callable[[F], F]:
        """Register an async or sync function as the handler called `name`.

        With `batch_size`/`batch_wait_s` it is a batch handler: `f(jobs: list[Job]) -> list[Any]`, called
        with up to batch_size requests gathered for at most batch_wait_s (defaults 100 and 0.5 s),
        returning one result per request, in order (an exception instance fails that request alone)."""
        policy = RetrySettings(**retry) if isinstance(retry, dict) else retry

        def decorate(func: F) -> F:
            self.handlers.register(name, func, retry=policy, timeout_s=timeout_s, batch_size=batch_size,
                                   batch_wait_s=batch_wait_s)
            return func

        return decorate

    def add_handler(self, name: str, func: HandlerFunc, **options: Any) -> None:
        self.handler(name, **options)(func)

    def add_middleware(self, middleware: Middleware) -> None:
        self.middleware.append(middleware)

    def on(self, event: str) -> Callable[[F], F]:
        """Register a hook for a lifecycle event: pending, scheduled, processing, retry, completed,
        failed, cancelled, expired. It is called with the RequestRecord in the process that made
        the change (the listener for final states, the worker for processing and retry)."""
        status = event.upper()
        if status not in Status.__members__:
            raise ConfigError(f"unknown lifecycle event {event!r}; known: "
                              f"{', '.join(s.lower() for s in Status.__members__)}")

        def decorate(func: F) -> F:
            self.hooks.setdefault(status, []).append(func)
            return func

        return decorate

    def dispatch(self, record: Any) -> None:
        """Run the hooks for a record's new status; a failing hook is logged, never propagated."""
        for hook in self.hooks.get(str(record.status), ()):
            try:
                outcome = hook(record)
                if inspect.isawaitable(outcome):
                    self._hook_tasks.spawn(outcome, on_done=_log_hook_failure)
            except Exception:
                log.exception("lifecycle hook failed", hook=getattr(hook, "__name__", repr(hook)))



def _log_hook_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("lifecycle hook failed", error=repr(task.exception()))


def load_app(settings: Settings) -> OpenHQM:
    """The OpenHQM app named by `worker.app` (module:attribute, importable from the working directory),
    bound to `settings`; without one, a plain app (its `echo` handler). ConfigError when it cannot be."""
    if not settings.worker.app:
        return OpenHQM(settings)
    module_name, _, attr = settings.worker.app.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        app = getattr(module, attr or "app")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"worker.app {settings.worker.app!r} cannot be loaded: {exc}") from exc
    if not isinstance(app, OpenHQM):
        raise ConfigError(f"worker.app {settings.worker.app!r} is a {type(app).__name__}, not an OpenHQM app")
    app.settings = settings
    return app
