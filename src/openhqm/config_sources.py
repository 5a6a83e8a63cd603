"""Where each effective setting came from: default, YAML file, environment variable or flag.

Kept beside config.py, not in it: it only compares what `load_settings` reads (the file, the
OPENHQM_* environment, the overrides) with the result, by the same precedence, flags > environment
> file > defaults, and so cannot change how settings load."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from openhqm.config import Settings, read_yaml, redacted
from openhqm.constants import ENV_PREFIX

DEFAULT = "default"
FLAG = "flag"


def dotted(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves as dotted keys; an empty mapping is a leaf of its own (queue.options: {})."""
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    # Only names whose first part is a setting: OPENHQM_URL, OPENHQM_CONFIG or Kubernetes'
    # OPENHQM_PORT are not settings.
    sections = set(Settings.model_fields)
    given: dict[str, str] = {}
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if parts[0] in sections:
            given[".".join(parts)] = f"environment variable {name}"
    return given


def setting_sources(settings: Settings, config_file: Path | str | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """{dotted key: (effective value with secrets masked, where it came from)} for `settings`, as
    loaded by `load_settings(config_file, overrides)` under `environ` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    given: dict[str, str] = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        given.update(dict.fromkeys((key for key, _ in dotted(read_yaml(Path(path)))), f"YAML file {path}"))
    given.update(_from_environment(environ))
    given.update(dict.fromkeys((key for key, _ in dotted(overrides or {})), FLAG))
    # Environment names are case-insensitive, so the comparison is too.
    lowered = {key.lower(): source for key, source in given.items()}
    return {key: (value, _source(key.lower(), lowered)) for key, value in dotted(redacted(settings))}


def _source(key: str, given: Mapping[str, str]) -> str:
    """The source of `key`, or of the nearest section given whole (OPENHQM_QUEUE__OPTIONS='{...}')."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        source = given.get(".".join(parts[:end]))
        if source is not None:
            return source
    return DEFAULT
