"""`openhqm serve`'s app for granian (bench.py --server granian): the same settings, app and lifespan
as the uvicorn server of `openhqm serve`, behind granian's Rust HTTP server instead.

    granian --interface asgi --factory granian_app:serve_app   # OPENHQM_* from the environment

A benchmark aid only: the product serves with uvicorn (docs/benchmarks.md has the comparison).
"""

from __future__ import annotations

from fastapi import FastAPI

from openhqm.cli.server import load_app
from openhqm.config import load_settings
from openhqm.http.app import create_app
from openhqm.logging import configure_logging


def serve_app() -> FastAPI:
    settings = load_settings(None)
    configure_logging(settings.logging)
    return create_app(load_app(settings), run_workers=True)
