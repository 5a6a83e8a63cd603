"""Every example configuration is valid as shipped, and the example app registers its handlers."""

from __future__ import annotations

from pathlib import Path

import pytest

from openhqm.config import load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configuration_is_valid(path: Path) -> None:
    settings = load_settings(path)
    assert settings.queue.type


def test_the_three_patterns_and_the_sidecar_have_an_example() -> None:
    names = {p.stem for p in EXAMPLES.glob("*.yaml")}
    assert {"http-to-queue", "queue-to-http", "http-queue-http", "sidecar"} <= names


def test_example_app_registers_its_handlers() -> None:
    from examples.handlers.app import app

    assert {"echo", "resize", "report"} <= set(app.handlers.names)
