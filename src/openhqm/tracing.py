"""OpenTelemetry, optional: the incoming `traceparent` travels in the envelope either way.

Off (the default): nothing is imported and the traceparent is passed on unchanged, so the backend
still joins the caller's trace. On (`tracing.enabled`, extra `openhqm[otel]`): the worker's span is
a child of the caller's, exported over OTLP/HTTP, and the forwarded request carries the worker
span's traceparent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from openhqm.config import TracingSettings
from openhqm.errors import MissingDependency

_tracer: Any = None


def configure_tracing(settings: TracingSettings, service_name: str) -> None:
    global _tracer
    if not settings.enabled:
        _tracer = None
        return
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise MissingDependency("install openhqm[otel] to use tracing.enabled") from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces" if settings.otlp_endpoint else None
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("openhqm")


@contextlib.contextmanager
def job_span(name: str, traceparent: str | None, attributes: dict[str, Any]) -> Iterator[str | None]:
    """A span for one job, child of `traceparent`; yields the traceparent to pass downstream."""
    if _tracer is None:
        yield traceparent
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    parent = propagator.extract({"traceparent": traceparent} if traceparent else {})
    with _tracer.start_as_current_span(name, context=parent, attributes=attributes):
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        yield carrier.get("traceparent", traceparent)


def shutdown_tracing() -> None:
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    with contextlib.suppress(Exception):
        provider.shutdown()  # type: ignore[attr-defined]
