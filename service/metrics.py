"""Prometheus metrics: requests, latency, batches, queue depth, errors, live versions.

With several worker processes (WORKERS > 1) the workers write their metrics to files in one
folder (prometheus_client's multiprocess mode, turned on by `share_between_workers` before they
start), and a scrape of any worker sums them all: one scrape per pod or container is complete."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
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
            "Requests by route template, method, status and protocol (native, v2, tfserving, grpc; a gRPC"
            " call counts under its method path with the HTTP status REST answers for the same)",
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
        # Across workers (multiprocess mode): rows waiting in all of them, the newest version live.
        self.queue_depth = Gauge(
            "model_queue_depth",
            "Rows waiting for a model call",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.live_version = Gauge(
            "model_live_version", "Version being served", ["model"], registry=r, multiprocess_mode="livemax"
        )
        self.errors = Counter(
            "service_errors", "Failures: model_load, inference, unhandled", ["kind"], registry=r
        )

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's when they share them."""
        if not os.environ.get(MULTIPROCESS_DIR):
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)
        return generate_latest(shared)

    def close(self) -> None:
        """On a worker's exit: its gauges leave the live sums (its counters still count)."""
        if os.environ.get(MULTIPROCESS_DIR):
            multiprocess.mark_process_dead(os.getpid())


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def share_between_workers() -> Path:
    """Call in the server process before it starts workers: they inherit the environment and keep
    their metrics in files in this folder, emptied now so nothing of an earlier run is counted.
    The folder is PROMETHEUS_MULTIPROC_DIR when set, else a new one under TMPDIR (writable even
    with a read-only root filesystem: /tmp is a tmpfs or emptyDir there)."""
    directory = Path(os.environ.get(MULTIPROCESS_DIR) or tempfile.mkdtemp(prefix="prometheus-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_DIR] = str(directory)
    return directory


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
