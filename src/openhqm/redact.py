"""Masking secrets for display (logs, errors, `config check`), as kombu's as_uri(mask=...) does."""

from __future__ import annotations

import re

SECRET_MASK = "**********"


def mask_url(url: str) -> str:
    """Hide the password in a URL (or in any text holding URLs)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1" + SECRET_MASK + "@", url)
