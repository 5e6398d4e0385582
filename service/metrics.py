"""Prometheus metrics: requests, latency, batches, queue depth, errors, live versions.

With several worker processes (WORKERS > 1) the workers write their metrics to files in one
folder (prometheus_client's multiprocess mode, turned on by `share_between_workers` before they
start), and a scrape of any worker sums them all: one scrape per pod or container is complete."""

from __future__ import annotations

import asyncio
import contextlib
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

        # Gauges say how much is under way now. Each worker sets its own (never a callback, which
        # multiprocess mode cannot read), and a scrape of any worker sums the live ones (`livesum`):
        # one scrape reads the pod's true value. A worker that exits leaves the sums (`close`).
        def live_sum(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, documentation, labels, registry=r, multiprocess_mode="livesum")

        in_all = ", in all the workers"
        self.queue_depth = live_sum("model_queue_depth", "Rows waiting for a model call" + in_all, ("model",))
        self.rows_in_model = live_sum(
            "model_rows_in_progress", "Rows in the batch the model is computing" + in_all, ("model",)
        )
        self.queue_capacity = live_sum(
            "model_queue_capacity", "Rows that may wait before requests are refused" + in_all, ("model",)
        )
        self.in_flight = live_sum("http_requests_in_flight", "HTTP requests not yet answered" + in_all)
        # The image decoders' memory budget: bytes that decodes under way hold, and the budget
        # itself (each worker has one of its own, so the pod's is their sum).
        self.decode_budget_in_use = live_sum(
            "decode_budget_bytes_in_use", "Bytes of the decoders' budget held by decodes" + in_all
        )
        self.decode_budget = live_sum("decode_budget_bytes", "The decoders' memory budget" + in_all)
        self.live_version = Gauge(
            "model_live_version", "Version being served", ["model"], registry=r, multiprocess_mode="livemax"
        )
        self.worker_memory = Gauge(
            "process_worker_resident_memory_bytes",
            "Resident memory of each worker process (multiprocess mode adds its pid as a label)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.errors = Counter(
            "service_errors", "Failures: model_load, inference, unhandled", ["kind"], registry=r
        )

    def record_memory(self) -> None:
        """Note this worker's resident memory now (Linux; elsewhere the gauge stays unset)."""
        with contextlib.suppress(OSError):
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            self.worker_memory.set(pages * os.sysconf("SC_PAGE_SIZE"))

    async def keep_recording_memory(self, every_s: float = 5.0) -> None:
        """Record this worker's memory every `every_s` seconds, for as long as the worker runs."""
        while True:
            self.record_memory()
            await asyncio.sleep(every_s)

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's when they share them."""
        if not os.environ.get(MULTIPROCESS_DIR):
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)
        return generate_latest(shared)

    def close(self) -> None:
        """On a worker's exit: its gauges leave the live sums (its counters still count)."""
        forget_worker(os.getpid())


def forget_worker(pid: int) -> None:
    """Take the live gauges of worker `pid`, which has exited, out of what scrapes sum. Called by
    the worker itself as it stops, and by the server process when it sees a worker die (killed,
    or crashed, with no chance to call it: service/process/supervisor.py)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(pid)


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
        self.metrics.in_flight.inc()

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            self.metrics.in_flight.dec()
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
