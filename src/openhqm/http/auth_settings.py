"""Client access control settings (`auth.*`): API keys with scopes, JWTs from a key, a JWKS file or URL.

Checked by http/auth.py; part of the one Settings object (config.py re-exports these names)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from openhqm.settings_base import Section

Scope = Literal["submit", "read", "admin"]


def _default_scopes() -> list[Scope]:
    return ["submit", "read"]


class ApiKeySettings(Section):
    name: str
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key")
    scopes: list[Scope] = Field(default_factory=_default_scopes)


class JWTSettings(Section):
    algorithm: Literal["HS256", "RS256"] = "HS256"
    key: SecretStr | None = Field(None, description="HS256 secret, or RS256 public key (PEM)")
    jwks_file: Path | None = None
    jwks_uri: str | None = Field(None, description="the token issuer's JWKS URL (https, or http on loopback)")
    audience: str | None = None
    issuer: str | None = None


class AuthSettings(Section):
    """Client access control; off unless api_keys or jwt is configured."""

    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    jwt: JWTSettings | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or self.jwt is not None
