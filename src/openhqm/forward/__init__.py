"""Forwarding a queued request to an HTTP service, and result callbacks; see docs/proxy.md."""

from openhqm.errors import (
    AuthFailed,
    CallbackFailed,
    CircuitOpen,
    ForwardError,
    ResponseTooLarge,
    UnsafeURL,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openhqm.forward.callbacks import CallbackDelivery, CallbackSender, CallbackTry, check_callback_url, sign, verify
from openhqm.forward.forwarder import Forwarder
from openhqm.forward.models import ForwardRequest, ForwardResponse, result_json
from openhqm.forward.retry import parse_retry_after
from openhqm.forward.settings import CallbackSettings, EndpointSettings, ProxySettings
from openhqm.policies import RetryPolicy

__all__ = [
    "AuthFailed",
    "CallbackDelivery",
    "CallbackFailed",
    "CallbackSender",
    "CallbackSettings",
    "CallbackTry",
    "CircuitOpen",
    "EndpointSettings",
    "ForwardError",
    "ForwardRequest",
    "ForwardResponse",
    "Forwarder",
    "ProxySettings",
    "ResponseTooLarge",
    "RetryPolicy",
    "UnsafeURL",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "check_callback_url",
    "parse_retry_after",
    "result_json",
    "sign",
    "verify",
]
