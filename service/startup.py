"""The one line that says a server is up: what it serves, where, and where to read more."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)


async def announce_when_ready(app: FastAPI, registry: ModelRegistry, settings: Settings) -> None:
    """Log once, when every model is first ready: models and versions, device, workers, URLs."""
    while not registry.ready:
        await asyncio.sleep(0.1)
    log.info(ready_line(app, registry, settings))


def ready_line(app: FastAPI, registry: ModelRegistry, settings: Settings) -> str:
    models = ", ".join(f"{state.name} v{state.live.version}" for state in registry.states() if state.live)
    workers = f"{settings.workers} worker" + ("s" if settings.workers > 1 else "")
    base = f"http://{settings.host}:{settings.port}"
    # create_app always serves both, from the app itself (the docs work offline).
    places = [f"page {base}/", f"API docs {base}/docs"]
    if settings.grpc_port:
        places.append(f"gRPC {settings.host}:{settings.grpc_port}")
    return f"ready: {models} on {registry.device}; {workers}" + "".join(f"; {p}" for p in places)
