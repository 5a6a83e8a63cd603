"""The capability table in docs/backends.md is the one the code generates."""

from __future__ import annotations

from pathlib import Path

from openhqm.backends.registry import capability_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "backends.md"


def test_docs_capability_table_matches_the_code() -> None:
    text = DOC.read_text()
    start = text.index("<!-- capability-table:start -->") + len("<!-- capability-table:start -->")
    end = text.index("<!-- capability-table:end -->")
    assert text[start:end].strip() == capability_table().strip(), "run `openhqm backends` and update the doc"
