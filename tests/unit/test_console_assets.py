"""The console's page and scripts, read as text: what they must never contain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openhqm.http.console import ASSETS_DIR

SCRIPTS = sorted(ASSETS_DIR.glob("*.js"))
# Each of these would turn data into markup or code; every value is shown with textContent instead.
HTML_SINKS = re.compile(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|\beval\(|new Function\(")


def test_the_console_ships_its_scripts() -> None:
    assert {path.name for path in SCRIPTS} >= {"app.js", "api.js", "dom.js", "overview.js", "requests.js",
                                               "detail.js", "dlq.js"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_no_script_writes_html_or_evaluates_text(script: Path) -> None:
    assert not HTML_SINKS.findall(script.read_text())


@pytest.mark.parametrize("asset", sorted(ASSETS_DIR.iterdir()), ids=lambda path: path.name)
def test_nothing_is_fetched_from_elsewhere(asset: Path) -> None:
    # The SVG namespace is a name, not an address the browser fetches.
    text = asset.read_text().replace("http://www.w3.org/2000/svg", "")
    assert not re.findall(r"https?://", text)


def test_every_module_the_scripts_import_is_shipped() -> None:
    for script in SCRIPTS:
        for name in re.findall(r'from "\./([\w.-]+)"', script.read_text()):
            assert (ASSETS_DIR / name).is_file(), f"{script.name} imports {name}"
