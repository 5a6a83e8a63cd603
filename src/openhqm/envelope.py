"""Envelope: the one message model for everything that crosses a queue.

Encoded with msgpack (msgspec): compact, fast and binary safe, so bodies travel as raw bytes.
A result travels back to the listener as a `Reply` on the response queue.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from openhqm.constants import DEFAULT_PRIORITY, ENVELOPE_VERSION
from openhqm.errors import UndecodableMessage


def new_id() -> str:
    """A random, URL-safe id with about 144 bits of entropy. Never starts with "-": a shell command
    (`openhqm wait <id>`, curl, grep) would read such an id as an option."""
    while (token := secrets.token_urlsafe(18)).startswith("-"):
        pass
    return token


class Caller(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Transport facts about who sent the request (for X-Forwarded-For/-Proto/-Host). Only the
    listener sets them, from the connection; nothing a client writes in a body can."""

    addr: str | None = None
    proto: str | None = None
    host: str | None = None


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str = msgspec.field(default_factory=new_id)
    correlation_id: str = ""
    session_id: str | None = None
    client_id: str | None = None
    reply_to: str | None = None
    priority: int = DEFAULT_PRIORITY
    created_at: float = msgspec.field(default_factory=time.time)
    not_before: float | None = None
    deadline: float | None = None
    expires_at: float | None = None
    timeout_s: float | None = None
    attempt: int = 1
    handler: str | None = None
    endpoint: str | None = None
    method: str | None = None
    path: str | None = None
    query: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None
    traceparent: str | None = None
    callback_url: str | None = None
    caller: Caller | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    raw: bool = False
    # Flow control (flow/limiter.py): the time this request's rate tokens are reserved for, and how
    # often a concurrency limit has made it wait; set only on a request a limit deferred.
    flow_ticket: float | None = None
    flow_waits: int = 0
    v: int = ENVELOPE_VERSION

    def __post_init__(self) -> None:
        if not self.correlation_id:
            self.correlation_id = self.id


class AttemptEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One finished attempt of a request, as its history on the record keeps it."""

    attempt: int
    started_at: float
    finished_at: float
    worker_id: str | None = None
    status_code: int | None = None  # the backend's HTTP status, for a forward
    error: str | None = None
    duration_ms: float | None = None


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a worker sends back on the response queue when a request reaches a terminal state."""

    correlation_id: str
    status: str
    result: Any = None
    error: str | None = None
    attempts: int = 1
    processing_time_ms: float | None = None
    completed_at: float = msgspec.field(default_factory=time.time)
    started_at: float | None = None
    raw_response: bytes | None = None
    attempt_history: list[AttemptEntry] | None = None  # the request's, this attempt included
    v: int = ENVELOPE_VERSION


_envelope_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def encode(message: Envelope | Reply) -> bytes:
    return _envelope_encoder.encode(message)


def decode_envelope(data: bytes) -> Envelope:
    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableMessage(f"not an openhqm envelope: {exc}") from exc
    if envelope.v > ENVELOPE_VERSION:
        raise UndecodableMessage(f"envelope version {envelope.v} is newer than {ENVELOPE_VERSION}")
    return envelope


def decode_reply(data: bytes) -> Reply:
    try:
        return _reply_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableMessage(f"not an openhqm reply: {exc}") from exc
