"""Client access control: an API key or a JWT becomes an `Identity` (client id + scopes).

A pure ASGI middleware authenticates every path except OPEN_PATHS, before the body is read, so a new
route is protected without anyone remembering to. Every failure answers the same 401 text; the reason
(unknown key, bad signature, expired, wrong audience) goes to the log only. Routes check scopes with
`Depends(require_scope("admin"))`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio.to_thread
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from openhqm.errors import ConfigError
from openhqm.http.auth_settings import ApiKeySettings, AuthSettings, JWTSettings
from openhqm.http.openapi import ASSETS_PATH, DOCS_PATHS
from openhqm.http.responses import problem
from openhqm.logging import get_logger

log = get_logger("openhqm.auth")

ScopeName = Literal["submit", "read", "admin"]
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"}) | DOCS_PATHS
UNAUTHORIZED_DETAIL = "missing or invalid credentials"
LEEWAY_S = 30.0  # clock skew tolerated for exp/nbf between the token issuer and this host
MIN_HMAC_KEY_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
JWKS_LIFESPAN_S = 300.0  # a fetched key set is used this long before it is fetched again
JWKS_COOLDOWN_S = 30.0  # a token with an unknown kid refetches at most this often (made-up kids cost nothing)
JWKS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Identity:
    client_id: str
    scopes: frozenset[str]


class APIKeys:
    """Keys are stored as SHA-256 digests; each presented key is compared with all of them in
    constant time. Several keys may share a name (rotation): they are one client."""

    def __init__(self, keys: list[ApiKeySettings]) -> None:
        self._keys = [(bytes.fromhex(k.key_sha256), Identity(k.name, frozenset(k.scopes))) for k in keys]

    def verify(self, key: str) -> Identity | None:
        # Starlette decodes header values as latin-1: encoding back gives the bytes the client sent.
        digest = hashlib.sha256(key.encode("latin-1")).digest()
        found = None
        for expected, identity in self._keys:
            if hmac.compare_digest(digest, expected):
                found = identity
        return found


def parse_scopes(claims: dict[str, Any]) -> frozenset[str]:
    """`scope` (space-separated, RFC 8693) and `scopes` (a list) both count; other shapes grant nothing."""
    scopes: set[str] = set()
    if isinstance(claims.get("scope"), str):
        scopes.update(claims["scope"].split())
    if isinstance(claims.get("scopes"), list):
        scopes.update(s for s in claims["scopes"] if isinstance(s, str))
    return frozenset(scopes)


class JWKSFile:
    """A JSON Web Key Set on disk, re-read when the file changes (a rotated, mounted secret)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns = -1
        try:
            self._refresh()
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(f"auth.jwt.jwks_file {str(path)!r}: {exc}") from exc

    def _refresh(self) -> None:
        mtime_ns = os.stat(self.path).st_mtime_ns
        if mtime_ns != self._mtime_ns:
            self._keys = jwt.PyJWKSet.from_dict(json.loads(self.path.read_text()))
            self._mtime_ns = mtime_ns

    def key(self, kid: str | None) -> jwt.PyJWK:
        try:
            self._refresh()
        except (OSError, ValueError, jwt.PyJWTError) as exc:  # half-written file: keep the last good set
            log.warning("jwks file unreadable; using the previous keys", path=str(self.path), error=str(exc))
        return _single_or_named(self._keys.keys, kid)


def _single_or_named(keys: list[jwt.PyJWK], kid: str | None) -> jwt.PyJWK:
    if kid is None:
        if len(keys) == 1:
            return keys[0]
        raise jwt.InvalidKeyError("token has no kid and the key set holds several keys")
    for key in keys:
        if key.key_id == kid:
            return key
    raise jwt.InvalidKeyError(f"no key with kid {kid!r}")


class JWKSURI:
    """The token issuer's key set over HTTP, with PyJWT's PyJWKClient: cached for JWKS_LIFESPAN_S,
    refetched early for an unknown kid (key rotation) at most once per JWKS_COOLDOWN_S. Fetched once
    at startup, so a wrong URL is a ConfigError rather than 401s. Fetching blocks (urllib), so the
    middleware verifies these tokens in a worker thread."""

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
            raise ConfigError(f"auth.jwt.jwks_uri {uri!r}: must be https:// (http:// only on a loopback host)")
        self.client = jwt.PyJWKClient(uri, lifespan=JWKS_LIFESPAN_S, timeout=JWKS_TIMEOUT_S,
                                      cooldown_duration=JWKS_COOLDOWN_S)
        try:
            self.client.get_jwk_set()
        except jwt.PyJWTError as exc:
            raise ConfigError(f"auth.jwt.jwks_uri {uri!r}: {exc}") from exc

    def key(self, kid: str | None) -> jwt.PyJWK:
        if kid is None:
            return _single_or_named(self.client.get_jwk_set().keys, None)
        return self.client.get_signing_key(kid)


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _static_key(settings: JWTSettings, secret: str) -> Any:
    """Parse the configured key once, at startup, so a bad key is a ConfigError and not 401s."""
    try:
        key = jwt.get_algorithm_by_name(settings.algorithm).prepare_key(secret)
    except (jwt.PyJWTError, ValueError) as exc:
        raise ConfigError(f"auth.jwt.key is not a valid {settings.algorithm} key: {exc}") from None
    if settings.algorithm == "HS256" and len(key) < MIN_HMAC_KEY_BYTES:
        raise ConfigError(f"auth.jwt.key: an HS256 secret needs at least {MIN_HMAC_KEY_BYTES} bytes")
    if settings.algorithm == "RS256" and not isinstance(key, RSAPublicKey):
        raise ConfigError("auth.jwt.key: RS256 needs the PEM *public* key of the token issuer")
    return key


class JWTVerifier:
    def __init__(self, settings: JWTSettings) -> None:
        if [settings.key, settings.jwks_file, settings.jwks_uri].count(None) != 2:
            raise ConfigError("auth.jwt: set exactly one of key (HS256 secret or RS256 PEM public key), "
                              "jwks_file and jwks_uri")
        self.settings = settings
        self._key: Any = _static_key(settings, settings.key.get_secret_value()) if settings.key else None
        self._jwks: JWKSFile | JWKSURI | None = None
        if settings.jwks_file:
            self._jwks = JWKSFile(settings.jwks_file)
        elif settings.jwks_uri:
            self._jwks = JWKSURI(settings.jwks_uri)
        self.blocking = isinstance(self._jwks, JWKSURI)

    def verify(self, token: str) -> Identity:
        """Raises jwt.PyJWTError for any invalid token; `sub` and `exp` are required."""
        key = self._jwks.key(jwt.get_unverified_header(token).get("kid")) if self._jwks else self._key
        claims = jwt.decode(token, key, algorithms=[self.settings.algorithm], audience=self.settings.audience,
                            issuer=self.settings.issuer, leeway=LEEWAY_S, options={"require": ["exp", "sub"]})
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise jwt.InvalidTokenError("sub is not a non-empty string")
        return Identity(subject, parse_scopes(claims))


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.keys = APIKeys(settings.api_keys)
        self.jwt = JWTVerifier(settings.jwt) if settings.jwt else None
        self.blocking = self.jwt is not None and self.jwt.blocking  # may fetch keys over the network

    def authenticate(self, headers: Headers) -> Identity | None:
        credential = bearer_token(headers) or headers.get("x-api-key")
        if not credential:
            return None
        identity = self.keys.verify(credential)
        if identity is None and self.jwt is not None:
            try:
                identity = self.jwt.verify(credential)
            except jwt.PyJWTError as exc:
                log.info("authentication failed", reason=f"{type(exc).__name__}: {exc}")
                return None
        if identity is None:
            log.info("authentication failed", reason="unknown API key")
        return identity


def bearer_token(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def build_authenticator(settings: AuthSettings) -> Authenticator | None:
    """None when access control is off; raises ConfigError for bad keys (call it at startup)."""
    return Authenticator(settings) if settings.enabled else None


class AuthMiddleware:
    """Sets `request.state.identity` (None when access control is off) or answers 401."""

    def __init__(self, app: ASGIApp, auth: Authenticator | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identity = None
        if self.auth is not None and not is_open(_route_path(scope)):
            headers = Headers(scope=scope)
            if self.auth.blocking:
                identity = await anyio.to_thread.run_sync(self.auth.authenticate, headers)
            else:
                identity = self.auth.authenticate(headers)
            if identity is None:
                response = problem(401, UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": 'Bearer realm="openhqm"'})
                await response(scope, receive, send)
                return
            # Scopes are checked here, once, rather than by a dependency on every route: the same
            # rule covers the API and the sidecar paths, and costs nothing when access control is off.
            needed = required_scope(scope["method"], _route_path(scope))
            if needed not in identity.scopes:
                response = problem(403, f"client {identity.client_id!r} lacks the scope {needed!r} "
                                        "this operation needs")
                await response(scope, receive, send)
                return
        state = scope.setdefault("state", {})
        state["identity"] = identity
        state["client_id"] = identity.client_id if identity else None  # what the sidecar route reads
        await self.app(scope, receive, send)


def is_open(path: str) -> bool:
    """Probes, metrics and the API's documentation (its page assets too) need no credentials."""
    return path in OPEN_PATHS or path.startswith(ASSETS_PATH + "/")


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def current_identity(request: Request) -> Identity | None:
    try:
        identity: Identity | None = request.state.identity
    except AttributeError:
        # Fail closed: without the middleware nobody was authenticated, so nothing may pass.
        raise RuntimeError("AuthMiddleware is not installed on this app") from None
    return identity


def required_scope(method: str, path: str) -> ScopeName:
    """The scope a request needs: admin for dead letters, stats, schedules, queue pause and resume,
    callback redelivery, replay and bulk cancel, submit to queue work (the submit route and sidecar
    paths), read for everything else under /api/v1."""
    if path.startswith(("/api/v1/dlq", "/api/v1/stats", "/api/v1/schedules")):
        return "admin"
    if method == "POST" and path.startswith("/api/v1/queues/"):
        return "admin"  # pause, resume
    if method == "POST" and path.startswith("/api/v1/requests/") and path.endswith("/callback"):
        return "admin"  # a redelivery sends data to a third party again
    if method == "POST" and (path == "/api/v1/requests/cancel" or (
            path.startswith("/api/v1/requests/") and path.endswith("/replay"))):
        return "admin"  # bulk actions, and running a finished request again
    if path.startswith("/api/v1/"):
        return "submit" if (method, path) == ("POST", "/api/v1/submit") else "read"
    return "submit"
