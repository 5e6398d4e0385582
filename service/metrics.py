"""Prometheus metrics: requests, latency, batches, queue depth, errors, live versions."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The service's metrics, in a registry of their own so each app (and test) starts at zero."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route template, method, status and protocol (native, v2, tfserving)",
            ["route", "method", "status", "protocol"],
            registry=r,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer, by route template and protocol",
            ["route", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "model_batch_size", "Rows per model call", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "model_batch_duration_seconds",
            "Time per model call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("model_queue_depth", "Rows waiting for a model call", ["model"], registry=r)
        self.live_version = Gauge("model_live_version", "Version being served", ["model"], registry=r)
        self.errors = Counter(
            "service_errors", "Failures: model_load, inference, unhandled", ["kind"], registry=r
        )


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by its route template (not its
    raw path, which would let clients create unbounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            path = _route_template(scope)
            protocol = getattr(route, "protocol", "native")  # set by the protocols' route classes
            self.metrics.requests.labels(path, scope["method"], str(status), protocol).inc()
            self.metrics.latency.labels(path, protocol).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The path template of the route that answered, "unmatched" for none. FastAPI's own routes
    put themselves in the scope; plain Starlette routes (/docs, /redoc, /openapi.json) do not,
    so those are looked up again, which only requests outside the API's routes pay for."""
    route = scope.get("route")
    if route is not None:
        return route.path
    for candidate in getattr(scope.get("app"), "routes", ()):
        if candidate.matches(scope)[0] == Match.FULL:
            return getattr(candidate, "path", "unmatched")
    return "unmatched"
