"""structlog setup: JSON lines (or a console view on a terminal), correlation ids, secret redaction."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from openhqm.config import LoggingSettings
from openhqm.redact import SECRET_MASK, mask_url

_SECRET_KEYS = re.compile(r"(authorization|cookie|password|secret|token|api[_-]?key|client_secret)", re.I)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values under secret-looking keys and passwords inside URLs, wherever they appear."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event[key] = SECRET_MASK
        elif isinstance(value, str) and "://" in value:
            event[key] = mask_url(value)
        elif isinstance(value, dict):
            event[key] = {k: (SECRET_MASK if _SECRET_KEYS.search(str(k)) else v) for k, v in value.items()}
    return event


def configure_logging(settings: LoggingSettings) -> None:
    """One format for everything: our events and the stdlib loggers (uvicorn, libraries) alike."""
    use_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_orjson_text) if use_json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    # Our own events, several per request, are the hot path: orjson renders them straight to bytes
    # (structlog's recommended fast setup). Library logs go through logging's text handler.
    binary = getattr(sys.stderr, "buffer", None) if use_json else None
    own_renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps) if binary else renderer
    factory: Any = (structlog.BytesLoggerFactory(binary) if binary is not None
                    else structlog.WriteLoggerFactory(sys.stderr))
    level = logging.getLevelName(settings.level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, own_renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _orjson_text(event: Any, **options: Any) -> str:
    return orjson.dumps(event, **options).decode()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
