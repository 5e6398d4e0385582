"""Every failure becomes a JSON `{"detail": ...}` with the status that says whose fault it is."""

from __future__ import annotations

from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.batching import Closed, QueueFull
from service.budget import BudgetExceeded, DecoderBusy
from service.images import ImageTooLarge, UndecodableImage, UnsupportedImage
from service.metrics import Metrics
from service.registry import ModelNotReady, UnknownModel
from service.schemas import FEATURES_FORMS, FEATURES_TAGS

RETRY_AFTER_S = "1"

# Domain exceptions and the HTTP status each one means; a subclass means what its nearest
# listed ancestor means (see `status_of`).
STATUS = {
    UndecodableImage: 400,
    UnknownModel: 404,
    ImageTooLarge: 413,
    BudgetExceeded: 413,
    UnsupportedImage: 415,
    ModelNotReady: 503,
    QueueFull: 503,
    Closed: 503,
    DecoderBusy: 503,
}


def status_of(error: Exception) -> int:
    """The status of the nearest class in `error`'s hierarchy that STATUS lists."""
    return next(STATUS[cls] for cls in type(error).__mro__ if cls in STATUS)


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def domain_error(request: Request, error: Exception) -> JSONResponse:
        status = status_of(error)
        headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
        return JSONResponse({"detail": str(error)}, status, headers)

    async def invalid_request(request: Request, error: Exception) -> JSONResponse:
        # FastAPI's default echoes the input back, which fails to serialize for NaN or ±Infinity
        # (a 500) and can be as large as the body; location, message and type are enough.
        errors = cast(RequestValidationError, error).errors()
        return JSONResponse({"detail": [_validation_error(e) for e in errors]}, 422)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # The last resort. Starlette re-raises the error after this response, so the server
        # (uvicorn) logs its traceback once.
        metrics.errors.labels("unhandled").inc()
        return JSONResponse({"detail": "internal error"}, 500)

    for exception in STATUS:
        app.add_exception_handler(exception, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)


def _validation_error(error: dict) -> dict:
    """One of pydantic's errors, located where the client put the value: `foo`, `features[0]`."""
    loc = list(error["loc"])
    # A features request is a union chosen by its keys, and pydantic puts the chosen form's tag
    # into the location (["body", "features", "features", 0]); the client never sent it.
    features_request = len(loc) >= 3 and loc[0] == "body" and loc[1] in FEATURES_TAGS
    if features_request:
        del loc[1]
    field = _field_name(loc[1:]) or str(loc[0])
    message = f"{field}: {error['msg']}" + (f"; {FEATURES_FORMS}" if features_request else "")
    return {"loc": loc, "field": field, "msg": message, "type": error["type"]}


def _field_name(path: list) -> str:
    """["instances", 0, 1] -> "instances[0][1]"."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name
