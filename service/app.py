"""The app factory: settings in, a FastAPI app out, its models loaded during its lifespan."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.deps import require_api_key
from service.device import configure_device
from service.draining import Drain
from service.errors import add_error_handlers
from service.identity import ServedBy
from service.limits import BodyLimits
from service.metrics import Metrics, RequestMetrics
from service.registry import ModelRegistry
from service.routes import predict, status
from service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    drain = Drain(settings.drain_delay_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        device = configure_device(settings.device, settings.intra_op_threads, settings.inter_op_threads)
        app.state.registry = registry = ModelRegistry(settings, device, metrics)
        app.state.decoders = decoders = ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="decode"
        )
        registry.start()
        drain.install()
        try:
            yield
        finally:  # the server has stopped taking requests and finished those in flight
            await registry.close()
            decoders.shutdown()
            metrics.close()

    app = FastAPI(
        title="Image and feature classifiers",
        summary="Serves the SavedModels exported by `training`, with dynamic micro-batching.",
        version="1",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry looks for configured providers on every request (about
        # 0.1 ms); this service exports Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = drain
    app.include_router(status.router)
    app.include_router(predict.router, dependencies=[Depends(require_api_key)] if settings.api_key else [])
    add_error_handlers(app, metrics)
    app.add_middleware(BodyLimits, max_bytes=settings.max_upload_bytes, seconds=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    app.add_middleware(RequestMetrics, metrics=metrics)  # sees every status
    app.add_middleware(ServedBy)  # outermost of ours: on every response, CORS and 413 included
    return app
