"""The one line that says a server is up: what it serves, where, and where to read more."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def announce_when_ready(app: FastAPI, registry: ModelRegistry, settings: Settings) -> None:
    """Log once, when every model is first ready: models and versions, device, workers, URLs."""
    while not registry.ready:
        await asyncio.sleep(0.1)
    log.info(ready_line(app, registry, settings))


def ready_line(app: FastAPI, registry: ModelRegistry, settings: Settings) -> str:
    models = ", ".join(f"{state.name} v{state.live.version}" for state in registry.states() if state.live)
    workers = f"{settings.workers} worker" + ("s" if settings.workers > 1 else "")
    why = getattr(app.state, "workers_why", None)  # set by service.main (WORKERS_WHY says why)
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
