"""Ready: once the first scan has loaded the models, the gRPC port opens, then one line says
that the server is up: what it serves, where, and where to read more."""

from __future__ import annotations

import asyncio
import logging
import os

from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from service.protocols.grpc_server import GrpcPortTaken, GrpcServer
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def open_when_loaded(
    app: FastAPI, registry: ModelRegistry, settings: Settings, grpc_server: GrpcServer | None
) -> None:
    """Once the first scan has loaded the models: open the gRPC port, then log the ready line.
    Nothing holds a gRPC call while models load, as service/loading.py holds HTTP requests, so
    the port opens only now: with several workers no call meets one still loading."""
    await registry.first_scan()
    if grpc_server is not None:
        try:
            await grpc_server.start()
        except GrpcPortTaken as error:  # taken since start-up checked it: stop as that would have
            log.critical("%s", error)
            os._exit(STARTUP_FAILURE)  # the supervisor then stops the service (supervisor.py)
    await announce_when_ready(app, registry, settings)


async def announce_when_ready(app: FastAPI, registry: ModelRegistry, settings: Settings) -> None:
    """Log once, when every model is first ready: models and versions, device, workers, URLs."""
    while not registry.ready:
        await asyncio.sleep(0.1)
    log.info(ready_line(app, registry, settings))


def ready_line(app: FastAPI, registry: ModelRegistry, settings: Settings) -> str:
    models = ", ".join(f"{state.name} v{state.live.version}" for state in registry.states() if state.live)
    workers = f"{settings.workers} worker" + ("s" if settings.workers > 1 else "")
    why = getattr(app.state, "workers_why", None)  # set by worker.py (WORKERS_WHY says why)
    workers += f" ({why})" if why else ""
    base = f"http://{settings.host}:{settings.port}"
    # create_app always serves both, from the app itself (the docs work offline).
    places = [f"page {base}/", f"API docs {base}/docs"]
    if settings.grpc_port:
        places.append(f"gRPC {settings.host}:{settings.grpc_port}")
    # The memory bound of docs/operating/security.md, so an operator can size a container from this line.
    budget = f"memory: idle + {settings.workers} × {settings.decode_budget_mb} MiB decoding"
    line = f"ready: {models} on {registry.device}; {workers}; {budget}" + "".join(f"; {p}" for p in places)
    if settings.api_key is None and settings.host not in LOOPBACK:
        line += f"; WARNING: predict routes open to anyone who can reach {settings.host} (set API_KEY)"
    return line
