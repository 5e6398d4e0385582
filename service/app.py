"""The app factory: settings in, a FastAPI app out, its models loaded during its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from threadpoolctl import threadpool_limits

from service.dataplane import DataPlane
from service.deadlines import stated_deadline
from service.deps import require_api_key
from service.disconnects import CancelWhenClientLeaves
from service.errors import add_error_handlers
from service.heap import freeze_imports
from service.identity import ServedBy
from service.limits import BodyLimits
from service.loading import WaitForModels
from service.metrics import Metrics, RequestMetrics
from service.process.device import configure_device
from service.process.draining import Drain
from service.process.ready import open_when_loaded
from service.protocols import tfserving_grpc, tfserving_routes, v2_grpc, v2_routes
from service.protocols.grpc_server import GrpcServer
from service.registry import ModelRegistry
from service.responses import JSONResponse
from service.routes import cards, docs, page, predict, status
from service.settings import Settings

DECODER_NICENESS = 10


def yield_the_cpu() -> None:
    """Run this (decoder) thread at a lower CPU priority than the event loop and the model: on
    a busy machine, a large upload's decoding waits, not every other client's request (Linux
    schedules threads one by one; elsewhere this does nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODER_NICENESS)


def grpc_server_for(plane: DataPlane, settings: Settings, metrics: Metrics) -> GrpcServer:
    """The ecosystem's gRPC protocols on GRPC_PORT beside the HTTP routes: same data plane."""
    server = GrpcServer(plane, settings, metrics)
    server.add(v2_grpc.SERVICE, v2_grpc.WIRE_PACKAGE, v2_grpc.InferenceServicer(plane), v2_grpc.GUARDED)
    tfserving = tfserving_grpc.WIRE_PACKAGE
    prediction = tfserving_grpc.PredictionServicer(plane)
    server.add(tfserving_grpc.PREDICTION_SERVICE, tfserving, prediction, tfserving_grpc.GUARDED)
    server.add(tfserving_grpc.MODEL_SERVICE, tfserving, tfserving_grpc.ModelServicer(plane))
    return server


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Resizing's small matrix products (service/resizing.py) run on numpy's BLAS, whose own
    # thread pool spun against the decoder threads and cost ten times the CPU of one BLAS
    # thread per caller (a py-spy profile under load). Here, not in the lifespan: OpenBLAS
    # ignores a limit set outside the main thread, and the app is built in the main thread.
    # TensorFlow does not use this BLAS.
    threadpool_limits(1, user_api="blas")
    metrics = Metrics()
    drain = Drain(settings.drain_delay_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        device = configure_device(settings.device, settings.intra_op_threads, settings.inter_op_threads)
        freeze_imports()  # before any model loads and any request is served: service/heap.py
        app.state.registry = registry = ModelRegistry(settings, device, metrics)
        app.state.decoders = decoders = ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="decode", initializer=yield_the_cpu
        )
        app.state.dataplane = plane = DataPlane(registry, settings, decoders, metrics)
        grpc_server = grpc_server_for(plane, settings, metrics) if settings.grpc_port else None
        if grpc_server is not None:
            grpc_server.check_port()  # fails the start-up, and the service, with the reason
            drain.on_start(grpc_server.draining)
            drain.on_stop(grpc_server.closing)
        registry.start()  # with several workers, requests wait for it: service/loading.py
        background = [
            asyncio.create_task(open_when_loaded(app, registry, settings, grpc_server)),
            asyncio.create_task(metrics.keep_recording_memory()),
        ]
        drain.install()
        try:
            yield
        finally:  # the server has stopped taking requests and finished those in flight
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if grpc_server is not None:  # before the batchers close: its RPCs in flight need them
                await grpc_server.stop(settings.shutdown_timeout_s)  # under way since SIGTERM's drain
            await registry.close()
            decoders.shutdown()
            metrics.close()

    app = FastAPI(
        title="Image and feature classifiers",
        # The description, not the summary: Swagger UI and ReDoc render it as Markdown, and show
        # a summary as typed, backticks and all.
        description="Serves the SavedModels exported by `training`, with dynamic micro-batching.",
        version="1",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry looks for configured providers on every request, a cost
        # that showed in profiles; this service exports Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # service.routes.docs serves both from the app, for offline machines
        redoc_url=None,
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = drain
    app.include_router(status.router)
    app.include_router(cards.router)
    app.include_router(page.router)
    app.include_router(docs.router)
    # Every inference route: the API key when one is set, and the deadline a client states.
    inference = [*([Depends(require_api_key)] if settings.api_key else []), Depends(stated_deadline)]
    app.include_router(predict.router, dependencies=inference)
    # The ecosystem's protocols, beside the service's own routes: same models, same batchers.
    app.include_router(v2_routes.router)
    app.include_router(v2_routes.inference, dependencies=inference)
    app.include_router(tfserving_routes.router)
    app.include_router(tfserving_routes.inference, dependencies=inference)
    add_error_handlers(app, metrics, protocol_prefixes=("/v2", "/v1"))
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
    # Outermost of all: on every response, CORS, 413 and the last resort's 500 included (Starlette
    # answers that one from a layer it puts outside every middleware added to the app).
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: ServedBy(build_stack())  # type: ignore[method-assign]
    return app
