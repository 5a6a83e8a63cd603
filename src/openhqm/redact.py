"""Masking secrets for display (logs, errors, `config check`), as kombu's as_uri(mask=...) does."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

SECRET_MASK = "**********"
# Request headers never shown as sent (the request API masks them; a flow limit keyed on one shows its hash).
MASKED_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]+@")


def mask_url(url: str) -> str:
    """Hide the password in a URL (or in any text holding URLs)."""
    return _URL_PASSWORD.sub(r"\1" + SECRET_MASK + "@", url)


def secret_values(settings: BaseModel) -> list[str]:
    """Every configured secret (SecretStr anywhere in the settings: tokens, keys, DSNs), for
    `mask_secrets` over free text such as a stored traceback."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
            for extra in (value.model_extra or {}).values():
                walk(extra)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(settings)
    return [secret for secret in found if secret]


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with URL passwords and every given secret masked (longest first, so none leaks partly)."""
    for secret in sorted({secret for secret in secrets if secret}, key=len, reverse=True):
        text = text.replace(secret, SECRET_MASK)
    return mask_url(text)


def redacted(settings: BaseModel) -> dict[str, Any]:
    """The effective configuration as plain data, every secret masked."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            # A plain URL keeps its shape with the password masked; anything else (connection
            # strings with SharedAccessKey=..., tokens) is masked whole.
            is_url = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^;\s]*$", secret) is not None
            return mask_url(secret) if is_url else SECRET_MASK
        if isinstance(value, BaseModel):
            fields = {k: walk(getattr(value, k)) for k in type(value).model_fields}
            return {**fields, **{k: walk(v) for k, v in (value.model_extra or {}).items()}}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    result: dict[str, Any] = walk(settings)
    return result
