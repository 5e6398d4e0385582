"""Shared route dependencies: the app's settings, registry and data plane, and the API key.

All are `async def` although none awaits: FastAPI runs plain `def` dependencies in a thread
pool, a hand-off that cost more than the rest of the request's routing together.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service import apikey
from service.dataplane import DataPlane
from service.registry import ModelRegistry
from service.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    _key: Annotated[str | None, Security(APIKeyHeader(name="X-API-Key", auto_error=False))],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(HTTPBearer(auto_error=False))],
) -> None:
    """401 unless the request carries API_KEY, as X-API-Key or as a Bearer token: read as gRPC's
    metadata is (service/apikey.py); the two security parameters put both in the OpenAPI schema."""
    apikey.require(request.headers, apikey.expected(settings) or b"")


async def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (FastAPI would otherwise validate the raw bytes)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HTTPException(415, "expected a JSON body (Content-Type: application/json)")
