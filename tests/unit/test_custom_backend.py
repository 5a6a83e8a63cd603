"""A third-party backend registered through the `openhqm.backends` entry point is found and works.

The example package is made importable with a real .dist-info directory on sys.path (what pip
would write), so the lookup goes through importlib.metadata exactly as it does for installed packages.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhqm.backends import get_backend_class
from openhqm.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-backend"


@pytest.fixture
def installed_example(tmp_path: Path) -> Iterator[None]:
    dist = tmp_path / "openhqm_example_backend-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: openhqm-example-backend\nVersion: 0.1.0\n")
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]["openhqm.backends"]
    lines = "".join(f"{name} = {target}\n" for name, target in declared.items())
    (dist / "entry_points.txt").write_text("[openhqm.backends]\n" + lines)
    sys.path[:0] = [str(tmp_path), str(EXAMPLE / "src")]
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.path.remove(str(EXAMPLE / "src"))
        sys.modules.pop("openhqm_example_backend", None)


async def test_entry_point_backend_is_selected_by_its_name(installed_example: None) -> None:
    cls = get_backend_class("example-memory")
    assert cls.__name__ == "CountingMemoryBackend"
    backend = cls(Settings(queue={"type": "example-memory"}))
    async with backend:
        await backend.publish("q", b"hello")
        deliveries = backend.consume("q")
        delivery = await anext(deliveries)
        assert delivery.body == b"hello"
        await delivery.ack()
        await deliveries.aclose()  # type: ignore[attr-defined]
    assert cls.published == 1  # type: ignore[attr-defined]
