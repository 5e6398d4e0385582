"""gRPC beside HTTP: each worker serves the Open Inference Protocol v2
(`inference.GRPCInferenceService`), TensorFlow Serving's `PredictionService` and `ModelService`,
and `grpc.health.v1.Health` on GRPC_PORT, from a `grpc.aio` server on the worker's own event
loop, so that its RPCs reach the same models through the same micro-batchers as HTTP requests.

Every worker binds the port with SO_REUSEPORT and the kernel spreads connections over them, as
it does HTTP's shared socket. The servicers are codecs (service/protocols/v2_grpc.py,
tfserving_grpc.py); what every RPC shares is here: the API key (`x-api-key` or `authorization:
Bearer` metadata, as HTTP's headers), errors as status codes with the REST messages (one
table, `CODES`), the request metrics (`protocol="grpc"`), messages held to the HTTP body limit,
and health that says NOT_SERVING from SIGTERM on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from service import deadlines
from service.dataplane import DataPlane
from service.disconnects import CLIENT_CLOSED_REQUEST
from service.errors import retry_after, status_of
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

# The status code for each HTTP status the REST routes answer for the same failure (the one
# error table, service/errors.py STATUS, gives each fault its HTTP status): one mapping for
# every RPC of every gRPC service.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,  # malformed: bad binary layout, undecodable image
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,  # no such model, or version not live
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # too many rows, too many pixels
    415: grpc.StatusCode.INVALID_ARGUMENT,  # not an image format the service decodes
    422: grpc.StatusCode.INVALID_ARGUMENT,  # well-formed but unfit: shape, datatype, values
    503: grpc.StatusCode.UNAVAILABLE,  # loading, queue full, closing: worth retrying
    504: grpc.StatusCode.DEADLINE_EXCEEDED,  # still waiting for the model at the call's deadline
}
RETRY_AFTER = "retry-after"  # trailing metadata on UNAVAILABLE, as REST's header
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_INTERVAL_S = 0.5


def _status(error: Exception) -> int:
    """What REST answers for `error`; 500 for a bug."""
    try:
        return status_of(error)
    except StopIteration:
        return 500


class Unauthenticated(Exception):
    """No API key, or the wrong one."""


class GrpcServer:
    """The worker's gRPC server: started once its models are loaded, stopped before its batchers."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics):
        self.plane = plane
        self.settings = settings
        self.metrics = metrics
        self.health = health_aio.HealthServicer()
        self.services: list[str] = []  # wire names, each also a health service name
        self.server: grpc.aio.Server | None = None
        self._handlers: list[grpc.GenericRpcHandler] = []
        self._watcher: asyncio.Task | None = None
        self._expected_key = settings.api_key.get_secret_value().encode() if settings.api_key else None

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
                self._answer(f"/{name}/{method.name}", implementation, method.name in guarded),
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
            )
        self._handlers.append(grpc.method_handlers_generic_handler(name, handlers))
        self.services.append(name)

    async def start(self) -> int:
        """Listen on GRPC_PORT (shared with the other workers); the port bound."""
        limit = self.settings.max_upload_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                # A request message is held to what an HTTP body may be; answers are small.
                ("grpc.max_receive_message_length", limit),
            ]
        )
        self.server.add_generic_rpc_handlers(tuple(self._handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        host = self.settings.host
        address = (
            f"[{host}]:{self.settings.grpc_port}" if ":" in host else f"{host}:{self.settings.grpc_port}"
        )
        port = self.server.add_insecure_port(address)
        for service in ("", *self.services):
            await self.health.set(service, NOT_SERVING)
        await self.server.start()
        self._watcher = asyncio.create_task(self._watch_health(), name="grpc-health")
        return port

    def draining(self) -> None:
        """From SIGTERM on, health says NOT_SERVING (called in the signal handler: schedules only)."""
        loop = self._watcher.get_loop() if self._watcher else None
        if loop is not None:
            loop.call_soon_threadsafe(lambda: loop.create_task(self.health.enter_graceful_shutdown()))

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs, let those in flight finish within `grace_s`, then close."""
        await self.health.enter_graceful_shutdown()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.server is not None:
            await self.server.stop(grace_s)

    async def _watch_health(self) -> None:
        """The whole server and each protocol service are SERVING while every model is ready;
        each model, under its own name, while it is."""
        while True:
            ready = SERVING if self.plane.ready else NOT_SERVING
            for service in ("", *self.services):
                await self.health.set(service, ready)
            for model in self.plane.states():
                await self.health.set(model.name, NOT_SERVING if model.problem else SERVING)
            await asyncio.sleep(HEALTH_INTERVAL_S)

    def _answer(
        self, route: str, implementation: Callable[[Any], Awaitable[Any]], guarded: bool
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        requests, latency = self.metrics.requests, self.metrics.latency.labels(route, "grpc")

        async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, status = time.perf_counter(), 500
            try:
                if guarded and self._expected_key is not None:
                    self._check_key(context)
                deadlines.arrived()
                remaining = context.time_remaining()  # None: the call has no deadline
                if remaining is not None:
                    deadlines.answer_within(remaining)
                response = await implementation(request)
                status = 200
                return response
            except asyncio.CancelledError:
                # grpc.aio cancels the call's task when its client cancels it or its deadline
                # passes: counted as such, and anything it waited for (a queued job) is dropped.
                left = context.time_remaining()
                status = 504 if left is not None and left <= 0 else CLIENT_CLOSED_REQUEST
                raise
            except Exception as error:
                status = 401 if isinstance(error, Unauthenticated) else _status(error)
                await self._abort(context, status, error, route)
            finally:
                # method POST: a gRPC call is one over HTTP/2; status: what REST answers for the same.
                requests.labels(route, "POST", str(status), "grpc").inc()
                latency.observe(time.perf_counter() - started)

        return answer

    def _check_key(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("x-api-key")
        if given is None and str(metadata.get("authorization", "")).lower().startswith("bearer "):
            given = str(metadata["authorization"])[len("bearer ") :].strip()
        # compare_digest takes as long whatever the key, so timing does not reveal it.
        if not given or not secrets.compare_digest(str(given).encode(), self._expected_key or b""):
            raise Unauthenticated("missing or wrong API key")

    async def _abort(
        self, context: grpc.aio.ServicerContext, status: int, error: Exception, route: str
    ) -> None:
        if status == 500:  # a bug, not the client's doing: counted and logged as HTTP's are
            log.error("%s failed", route, exc_info=error)
            self.metrics.errors.labels("unhandled").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        if status == 503:
            context.set_trailing_metadata(((RETRY_AFTER, retry_after(error)),))
        await context.abort(CODES[status], str(error))
