"""gRPC beside HTTP: each worker serves the Open Inference Protocol v2
(`inference.GRPCInferenceService`), TensorFlow Serving's `PredictionService` and `ModelService`,
and `grpc.health.v1.Health` on GRPC_PORT, from a `grpc.aio` server on the worker's own event
loop, so that its RPCs reach the same models through the same micro-batchers as HTTP requests.

Every worker binds the port with SO_REUSEPORT and the kernel spreads connections over them, as
it does HTTP's shared socket; connections live at most GRPC_MAX_CONNECTION_AGE_S, so that one
client channel's calls spread over every worker too (a connection's calls all go to the worker
that accepted it). The servicers are codecs (service/protocols/v2_grpc.py, tfserving_grpc.py);
what every RPC shares is one interceptor, `Door`: the API key (`x-api-key` or `authorization:
Bearer` metadata, as HTTP's headers), errors as the status codes of the one error table
(service/errors.py) with the REST messages, the request metrics (`protocol="grpc"`), and
which worker answered (`x-served-by` trailing metadata, as HTTP's header).
Messages are held to the HTTP body limit; health says NOT_SERVING from SIGTERM on, and the
server stops taking calls when the HTTP server stops taking connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from service import apikey, deadlines
from service.dataplane import DataPlane
from service.errors import (
    CLIENT_CLOSED_REQUEST,
    grpc_code_of,
    headers_of,
    internal_error,
    status_of,
    status_of_grpc_code,
)
from service.metrics import Metrics
from service.middleware import SERVED_BY, replica_identity
from service.settings import Settings

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_INTERVAL_S = 0.5


class Door(grpc.aio.ServerInterceptor):
    """What every RPC of every service goes through, in one place: the API key for the methods
    that need it, the call's deadline (service/deadlines.py), the request metrics, and each
    error as the code the one error table gives it, with REST's message (and REST's Retry-After
    as trailing metadata)."""

    def __init__(self, metrics: Metrics, guarded: Collection[str], expected_key: bytes | None):
        self.metrics = metrics
        self.guarded = guarded  # wire paths, "/package.Service/Method"
        self.expected_key = expected_key
        # Which worker answered, as HTTP's X-Served-By header says (service/middleware.py).
        self.served_by = ((SERVED_BY.lower(), replica_identity()),)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown (UNIMPLEMENTED) or streaming (health's Watch): as they are
        route = details.method
        guarded = self.expected_key is not None and route in self.guarded
        return handler._replace(unary_unary=self._answer(route, handler.unary_unary, guarded))

    def _answer(self, route: str, behaviour: Callable, guarded: bool) -> Callable:
        requests, latency = self.metrics.requests, self.metrics.latency.labels(route, "grpc")

        async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, status = time.perf_counter(), 500
            context.set_trailing_metadata(self.served_by)
            try:
                if guarded:
                    apikey.require(dict(context.invocation_metadata() or ()), self.expected_key or b"")
                deadlines.arrived()
                remaining = context.time_remaining()  # None: the call has no deadline
                if remaining is not None:
                    deadlines.answer_within(remaining)
                response = await behaviour(request, context)
                status = 200
                return response
            except grpc.aio.AbortError:  # another layer's answer (health: NOT_FOUND), as it is
                status = status_of_grpc_code(context.code())
                raise
            except asyncio.CancelledError:
                # grpc.aio cancels the call's task when its client cancels it or its deadline
                # passes: counted as such, and anything it waited for (a queued job) is dropped.
                left = context.time_remaining()
                status = 504 if left is not None and left <= 0 else CLIENT_CLOSED_REQUEST
                raise
            except Exception as error:
                status = status_of(error)
                await self._abort(context, status, error, route)
            finally:
                # method POST: a gRPC call is one over HTTP/2; status: what REST answers for the same.
                requests.labels(route, "POST", str(status), "grpc").inc()
                latency.observe(time.perf_counter() - started)

        return answer

    async def _abort(self, context: grpc.aio.ServicerContext, status: int, error: Exception, route: str):
        message = internal_error(self.metrics, route, error)[1] if status == 500 else str(error)
        trailers = headers_of(status, error=error) or {}
        if "Retry-After" in trailers:
            context.set_trailing_metadata((*self.served_by, ("retry-after", trailers["Retry-After"])))
        await context.abort(grpc_code_of(status), message)


class GrpcPortTaken(RuntimeError):
    """GRPC_PORT cannot be bound: the service must not start without it."""


class GrpcServer:
    """The worker's gRPC server: its port checked at start-up, served once its models are
    loaded, stopped together with the HTTP server, before its batchers close."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics):
        self.plane = plane
        self.settings = settings
        self.metrics = metrics
        self.health = health_aio.HealthServicer()
        self.services: list[str] = []  # wire names, each also a health service name
        self.guarded: set[str] = set()  # wire paths of the RPCs that need the API key
        self.server: grpc.aio.Server | None = None
        self._handlers: list[grpc.GenericRpcHandler] = []
        self._watcher: asyncio.Task | None = None
        self._stopping: asyncio.Task | None = None
        self._models: set[str] = set()  # the model names health answered for at its last look

    @property
    def address(self) -> str:
        host, port = self.settings.host, self.settings.grpc_port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def add(self, descriptor: ServiceDescriptor, wire_package: str, servicer: Any, guarded=()) -> None:
        """Serve the RPCs `servicer` implements (async methods named as the proto's, request in,
        response out) under `<wire_package>.<service>`, the name the ecosystem's clients call;
        the methods named in `guarded` need the API key when one is set."""
        name = f"{wire_package}.{descriptor.name}"
        handlers = {}
        for method in descriptor.methods:
            implementation = getattr(servicer, method.name, None)
            if implementation is None:
                continue  # clients get UNIMPLEMENTED, as from a server without the method
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _without_context(implementation),
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
            )
            if method.name in guarded:
                self.guarded.add(f"/{name}/{method.name}")
        self._handlers.append(grpc.method_handlers_generic_handler(name, handlers))
        self.services.append(name)

    def check_port(self) -> None:
        """GrpcPortTaken unless this worker could bind GRPC_PORT as it will once its models
        load: with SO_REUSEPORT, which its fellow workers' sockets share and any other listener
        (the HTTP port, another program) refuses. Called at start-up, so that the service stops
        with the reason instead of serving HTTP alone and saying it is ready."""
        host, port = self.settings.host, self.settings.grpc_port
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                raise GrpcPortTaken(self._taken(error.strerror or str(error))) from None

    def _taken(self, why: str) -> str:
        return (
            f"GRPC_PORT {self.settings.grpc_port} on {self.settings.host} cannot be bound ({why}):"
            " another server listens there; choose another port, or GRPC_PORT=0 for no gRPC"
        )

    async def start(self) -> int:
        """Listen on GRPC_PORT (shared with the other workers); the port bound."""
        settings = self.settings
        age_ms = round(settings.grpc_max_connection_age_s * 1000)
        self.server = grpc.aio.server(
            interceptors=[Door(self.metrics, self.guarded, apikey.expected(settings))],
            options=[
                ("grpc.so_reuseport", 1),
                # A request message is held to what an HTTP body may be; answers are small.
                ("grpc.max_receive_message_length", settings.max_upload_bytes),
                # A connection's calls all reach the worker that accepted it: ending it
                # (GOAWAY; the client reconnects at once, and the kernel picks a worker afresh)
                # spreads one channel's calls over every worker. Calls in flight finish first.
                *([("grpc.max_connection_age_ms", age_ms)] if age_ms else []),
                ("grpc.max_connection_age_grace_ms", settings.shutdown_timeout_s * 1000),
            ],
        )
        self.server.add_generic_rpc_handlers(tuple(self._handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            port = self.server.add_insecure_port(self.address)
        except RuntimeError as error:  # taken between check_port and now
            raise GrpcPortTaken(self._taken(str(error))) from None
        await self._look()  # health answers from the first call on, not grpc's default SERVING
        await self.server.start()
        self._watcher = asyncio.create_task(self._watch_health(), name="grpc-health")
        return port

    def draining(self) -> None:
        """From SIGTERM on, health says NOT_SERVING (called in the signal handler: schedules only)."""
        self._soon(lambda: asyncio.ensure_future(self.health.enter_graceful_shutdown()))

    def closing(self) -> None:
        """The HTTP server stops taking connections: stop taking calls at the same moment, with
        the same grace for those in flight (called in the signal handler: schedules only)."""
        self._soon(lambda: self.stop(self.settings.shutdown_timeout_s))

    def _soon(self, callback: Callable[[], Any]) -> None:
        loop = self._watcher.get_loop() if self._watcher else None
        if loop is not None:
            loop.call_soon_threadsafe(callback)

    def stop(self, grace_s: float) -> asyncio.Task:
        """Refuse new RPCs, let those in flight finish within `grace_s`, then close; the one
        stop under way if there is one already, so that the HTTP server's drain and the app's
        shutdown share it."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        return self._stopping

    async def _stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.server is not None:
            await self.server.stop(grace_s)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._look()

    async def _look(self) -> None:
        """The whole server and each protocol service are SERVING while the replica is ready
        (as /readyz); each model, under its own name, while it is, and NOT_SERVING once gone."""
        ready = SERVING if self.plane.registry.ready else NOT_SERVING
        for service in ("", *self.services):
            await self.health.set(service, ready)
        models = self.plane.registry.states()
        for model in models:
            await self.health.set(model.name, NOT_SERVING if model.problem else SERVING)
        for gone in self._models - {model.name for model in models}:
            await self.health.set(gone, NOT_SERVING)
        self._models = {model.name for model in models}


def _without_context(implementation: Callable[[Any], Awaitable[Any]]) -> Callable:
    """A servicer method (request in, response out) as grpc calls a behaviour."""

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await implementation(request)

    return behaviour
