"""The HTTP middleware: what every request passes through around the routes. Outermost first
(`install` adds them in this order; gRPC calls have their own door, protocols/grpc_server.py):

- `ServedBy`: every response names its replica in `X-Served-By`, the last resort's 500 included.
- `RequestMetrics`: every request counted and timed by its route template, whatever its status.
- `CancelWhenClientLeaves`: a client that hangs up stops its request (counted as a 499).
- CORS, where CORS_ORIGINS is set.
- `WaitForModels`: with several workers, one still loading holds what needs its models.
- `BodyLimits`: the body's size (413) and time (408), enforced while it arrives.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import deadlines
from service.errors import CLIENT_CLOSED_REQUEST
from service.metrics import Metrics
from service.settings import Settings

SERVED_BY = "X-Served-By"
# Answered at once by a worker still loading its models: it is alive (liveness probes pass from
# the start), and a scrape reads every worker.
ANSWERED_WHILE_LOADING = frozenset({"/healthz", "/metrics"})


class App(FastAPI):
    """FastAPI with `ServedBy` outermost of all: outside the layer Starlette answers the last
    resort's 500 from, which it puts outside every middleware added to the app."""

    def build_middleware_stack(self) -> ASGIApp:
        return ServedBy(super().build_middleware_stack())


def install(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Add the middleware, innermost first (each one added wraps those before it); `ServedBy`
    comes with `App`."""
    app.add_middleware(BodyLimits, max_bytes=settings.max_upload_bytes, seconds=settings.body_timeout_s)
    if settings.workers > 1:
        app.add_middleware(WaitForModels)  # outside the body's timer, inside the metrics
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "Request-Timeout"],
        )
    app.add_middleware(CancelWhenClientLeaves)  # inside the metrics, which count its 499s
    app.add_middleware(RequestMetrics, metrics=metrics)  # sees every status


def replica_identity() -> str:
    """`<hostname>/<pid>` of this worker process: behind a load balancer or a Kubernetes Service
    this tells replicas apart (the host is the container's or pod's name, the process the
    worker's) without any access to them."""
    return f"{socket.gethostname()}/{os.getpid()}"


class ServedBy:
    """Every HTTP response says which replica answered: `X-Served-By: <hostname>/<pid>`."""

    def __init__(self, app: ASGIApp):
        self.app = app
        # Built in the worker process (each worker imports the app), so the pid is the worker's.
        self.identity = replica_identity()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(SERVED_BY, self.identity)
            await send(message)

        await self.app(scope, receive, send_with_identity)


class RequestMetrics:
    """Every HTTP request counted and timed by its route template (not its raw path, which would
    let clients create unbounded label values) and protocol."""

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


class CancelWhenClientLeaves:
    """A client that hangs up stops its request: nothing is computed for a client that is gone.

    Once a request's body is in, the only message the server has left for it is the disconnect
    (uvicorn's `receive()` then waits for the connection to close or the response to finish),
    so a watcher waits for it beside the route. If the client leaves before the answer starts,
    the request's task is cancelled: whatever it awaits is cancelled with it, and a request
    waiting in a model's queue leaves the queue at once (service/batching.py). The request is
    counted with status 499, nginx's "client closed request" (the answer goes nowhere: uvicorn
    drops it); so is one whose client leaves while its body is still coming in (Starlette's
    ClientDisconnect), which is the client's doing, not an error of the service's."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = asyncio.current_task()
        assert request is not None
        watcher: asyncio.Task | None = None
        answering = gone = False

        def client_left(watch: asyncio.Task) -> None:
            nonlocal gone
            if watch.cancelled() or answering:
                return
            gone = True
            request.cancel()

        async def receive_and_watch() -> Message:
            nonlocal watcher
            if watcher is not None:  # the app reads on after its body: the disconnect is all there is
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(_disconnect(receive), name="client-watch")
                watcher.add_done_callback(client_left)
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_note)
        except asyncio.CancelledError:
            if not gone or request.uncancel():  # cancelled for another reason too: a shutdown
                raise
            await _closed_by_client(send)
        except ClientDisconnect:  # the client left while its body was still coming in
            if answering:
                raise
            await _closed_by_client(send)
        finally:
            if watcher is not None:
                watcher.cancel()


async def _closed_by_client(send: Send) -> None:
    """For the request metrics: the server has nobody to send the answer to, and drops it."""
    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _disconnect(receive: Receive) -> Message:
    while (message := await receive())["type"] != "http.disconnect":
        pass
    return message


class WaitForModels:
    """With several workers, one still loading its models answers at once only what needs none.

    Workers share one listening socket and the kernel hands each connection to whichever worker
    accepts it, loaded or not. A worker still loading answers ANSWERED_WHILE_LOADING at once and
    holds every other request, `/readyz` included, until its first scan of MODEL_DIR has loaded
    or rejected every model (the app's `state.registry`, started by its lifespan): no request
    meets "loading" from one worker while another is ready. With one worker nothing is held:
    `/readyz` says "loading" and predictions get 503 until its models are ready."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in ANSWERED_WHILE_LOADING:
            await scope["app"].state.registry.first_scan()
        await self.app(scope, receive, send)


class BodyLimits:
    """At most `max_bytes` of body, all received within `seconds`: 413 and 408, enforced while
    the body arrives.

    A declared Content-Length over the cap is refused at the first read, before receiving
    anything; bodies without one (chunked) are counted as they stream in and cut off at the cap.
    The deadline covers the whole body, so a client trickling a byte at a time cannot hold the
    service either. The body's last byte is when the request has come in, for the default
    deadline (service/deadlines.py): a slow upload does not use up the time it may wait for the
    model. (FastAPI's own `max_body_size` answers 413 in plain text; this keeps every error JSON.)"""

    def __init__(self, app: ASGIApp, max_bytes: int, seconds: float):
        self.app = app
        self.max_bytes = max_bytes
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body over {self.max_bytes} bytes (MAX_UPLOAD_BYTES)"
        declared = Headers(scope=scope).get("content-length", "")
        # Refused at the first read, before anything is received, rather than answered here:
        # the route that reads the body answers in its own protocol's error format.
        declared_too_large = declared.isdigit() and int(declared) > self.max_bytes
        deadline = asyncio.get_running_loop().time() + self.seconds
        received = 0
        body_done = False

        async def receive_within_limits() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, which may take any time
                return await receive()
            if declared_too_large:
                raise HTTPException(413, too_large)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, "request body not received in time") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large)
                body_done = not message.get("more_body", False)
                if body_done:  # REQUEST_TIMEOUT_S counts from here: the network's time is not the queue's
                    deadlines.arrived()
            else:
                body_done = True
            return message

        await self.app(scope, receive_within_limits, send)
