"""Resolve `results.type` to a ResultStore."""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from openhqm.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from openhqm.config import Settings
    from openhqm.results.base import ResultStore

STORE_TYPES = ("memory", "sqlite", "redis", "postgres")


def create_store(settings: Settings) -> ResultStore:
    kind = settings.results.type
    if kind == "memory":
        from openhqm.results.memory import MemoryResultStore

        return MemoryResultStore()
    if kind == "sqlite":
        from openhqm.backends.sqlite import SQLiteOptions
        from openhqm.results.sqlite import SQLiteResultStore

        # One file, one fallback poll interval for queue and store.
        options = settings.queue.options_for("sqlite", SQLiteOptions)
        return SQLiteResultStore(settings.data_dir / "openhqm.db", synchronous=options.synchronous,
                                 watch_interval_s=max(0.02, options.poll_interval_s))
    if kind in ("redis", "postgres"):
        extra = {"redis": "redis", "postgres": "postgres"}[kind]
        try:
            module = importlib.import_module(f"openhqm.results.{kind}")
        except ImportError as exc:
            raise MissingDependency(f"install openhqm[{extra}] to use results type '{kind}'") from exc
        store: ResultStore = module.create(settings)
        return store
    close = difflib.get_close_matches(kind, STORE_TYPES, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown results type '{kind}'{hint} available: {', '.join(STORE_TYPES)}")
