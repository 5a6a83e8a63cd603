"""RFC 7240 `Prefer` parsing: `wait=N` and `respond-async`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preferences:
    wait_s: float | None = None
    respond_async: bool = False


def parse_prefer(values: list[str]) -> Preferences:
    """Unknown or malformed preferences are ignored, as RFC 7240 section 2 asks."""
    wait_s: float | None = None
    respond_async = False
    for header in values:
        for item in header.split(","):
            token = item.split(";", 1)[0].strip()
            name, _, value = token.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"')
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and wait_s is None:
                try:
                    parsed = float(value)
                except ValueError:
                    continue
                if parsed >= 0:
                    wait_s = parsed
    return Preferences(wait_s, respond_async)
