"""Every Prometheus metric openhqm exports, with bounded labels (route templates, queue names, and
handler and endpoint names from configuration, never from a request).

With `server.processes` > 1 every serving process writes its values to files in the directory
named by PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, chosen when prometheus_client
is imported; the supervisor sets it for its children), and /metrics adds up all of them. Each gauge
says how: store-wide readings (depths, counts, pause) show the newest any process took, per-process
figures (in flight, pool size) are summed over the living processes. One process: plain in-memory values.
"""

from __future__ import annotations

import functools
import os
from typing import Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from openhqm.envelope import Envelope
from openhqm.errors import RequestRejected
from openhqm.routing import Routing

M = TypeVar("M", bound=MetricWrapperBase)

# A `_created` series per counter and histogram child doubles the series count and no dashboard or
# alert reads it; off in code, so no deployment has to remember PROMETHEUS_DISABLE_CREATED_SERIES.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

REGISTRY = CollectorRegistry(auto_describe=True)
# Read once, as prometheus_client read it when choosing where values live (in memory, or in files there).
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

NEWEST: Literal["mostrecent"] = "mostrecent"  # a reading of shared state: the latest any process took
SUM: Literal["livesum"] = "livesum"  # this process's share: summed over the processes alive

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter("openhqm_http_requests", "HTTP requests answered by the listener",
                        ["route", "method", "status"], registry=REGISTRY)
HTTP_DURATION = Histogram("openhqm_http_request_duration_seconds", "Listener request duration",
                          ["route", "method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
QUEUE_DEPTH = Gauge("openhqm_queue_depth", "Messages waiting in a queue", ["queue"], registry=REGISTRY,
                    multiprocess_mode=NEWEST)
QUEUE_PAUSED = Gauge("openhqm_queue_paused", "1 while a queue is paused (workers take nothing from it)",
                     ["queue"], registry=REGISTRY, multiprocess_mode=NEWEST)
QUEUE_OLDEST_AGE = Gauge("openhqm_queue_oldest_age_seconds", "Age of the oldest unfinished request",
                         ["queue"], registry=REGISTRY, multiprocess_mode=NEWEST)
# `handler` and `endpoint`: exactly one is set; both "" for a message without a known target.
MESSAGES = Counter("openhqm_messages", "Messages handled by workers, by outcome and target",
                   ["queue", "outcome", "handler", "endpoint"], registry=REGISTRY)
PROCESSING_DURATION = Histogram("openhqm_processing_duration_seconds", "Handler or forward duration",
                                ["queue", "handler", "endpoint"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
INFLIGHT = Gauge("openhqm_inflight", "Messages being processed now", ["queue"], registry=REGISTRY,
                 multiprocess_mode=SUM)
UPSTREAM_REQUESTS = Counter("openhqm_upstream_requests", "Calls to HTTP backends",
                            ["endpoint", "status_class"], registry=REGISTRY)
UPSTREAM_DURATION = Histogram("openhqm_upstream_duration_seconds", "HTTP backend call duration",
                              ["endpoint"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
CIRCUIT_STATE = Gauge("openhqm_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                      ["endpoint"], registry=REGISTRY, multiprocess_mode="livemax")  # the worst breaker
RESULTS = Gauge("openhqm_results", "Requests in the result store, by status", ["status"], registry=REGISTRY,
                multiprocess_mode=NEWEST)
# `via`: "consume" (taken from the queue) or "eager" (handed over by this process's submit, never
# consumed: worker/pool.py, listener/enqueue.py).
WORKER_DELIVERIES = Counter("openhqm_worker_deliveries", "Messages a worker pool started, by how they reached it",
                            ["queue", "via"], registry=REGISTRY)
WORKER_CONCURRENCY = Gauge("openhqm_worker_concurrency", "Current size of the worker pool", registry=REGISTRY,
                           multiprocess_mode=SUM)
SUBMITTED = Counter("openhqm_submitted", "Requests accepted by the listener", ["queue"], registry=REGISTRY)
# `reason`: BackendUnavailable.reason of the refusal (unavailable, queue_full, store_full), a fixed set.
SUBMITS_REFUSED = Counter("openhqm_submits_refused", "Submits answered 503, by reason", ["queue", "reason"],
                          registry=REGISTRY)
# Dead letters no worker wrote: `broker_redrive` (the broker's delivery limit moved the message) and
# `reconciled_missing` (unfinished far too long, its message gone): both mean work was lost mid-way.
FOUND_DEAD_LETTERS = Counter("openhqm_found_dead_letters", "Requests the listener dead-lettered itself, by reason",
                             ["queue", "reason"], registry=REGISTRY)
# Flow limits (flow/limiter.py): `limit` is a configured limit's name, never a key value.
FLOW_ADMITTED = Counter("openhqm_flow_admitted", "Requests a flow limit let run", ["limit"], registry=REGISTRY)
FLOW_DEFERRED = Counter("openhqm_flow_deferred", "Requests a flow limit made wait (each deferral)", ["limit"],
                        registry=REGISTRY)
FLOW_WAITING = Gauge("openhqm_flow_waiting", "Requests waiting on a flow limit, all processes (as last seen)",
                     ["limit"], registry=REGISTRY, multiprocess_mode=NEWEST)
FLOW_IN_FLIGHT = Gauge("openhqm_flow_in_flight", "Concurrency slots of a flow limit held, all processes (as last "
                       "read by the listener)", ["limit"], registry=REGISTRY, multiprocess_mode=NEWEST)


def exposition() -> bytes:
    """The /metrics body: this process's registry, or every serving process's files added up."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY)
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


@functools.lru_cache(maxsize=4096)
def child(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, cached: labels() takes a lock and builds a key on every call, and
    the hot path asks for the same few children thousands of times a second. Label values are
    bounded (route templates, queue and endpoint names), so the cache is too."""
    return metric.labels(*values)


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "error"


@functools.lru_cache(maxsize=1024)
def _known_target(routing: Routing, handler: str | None, endpoint: str | None) -> tuple[str, str]:
    try:
        if handler is not None:
            routing.handlers.get(handler)
            return handler, ""
        if endpoint is not None and routing.endpoints is not None:
            return "", routing.endpoints.resolve(endpoint, method="POST", path="/", headers={}, payload_json=None)
    except RequestRejected:  # named by another system's message: not a value configuration allows
        pass
    return "", ""


def target_labels(envelope: Envelope | None, routing: Routing) -> tuple[str, str]:
    """(handler, endpoint) label values for a routed message. Only names the routing knows (registered
    handlers, configured endpoints) become values, so a message published by another system naming
    anything it likes cannot grow the series count; the cache keeps the hot path at one lookup."""
    if envelope is None:
        return "", ""
    return _known_target(routing, envelope.handler, envelope.endpoint)
