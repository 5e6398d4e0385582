"""Every failure becomes a JSON `{"detail": ...}` with the status that says whose fault it is."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.batching import Closed, QueueFull
from service.images import ImageTooLarge, UndecodableImage, UnsupportedImage
from service.metrics import Metrics
from service.registry import ModelNotReady, UnknownModel

RETRY_AFTER_S = "1"

# Domain exceptions and the HTTP status each one means; a subclass means what its nearest
# listed ancestor means (see `status_of`).
STATUS = {
    UndecodableImage: 400,
    UnknownModel: 404,
    ImageTooLarge: 413,
    UnsupportedImage: 415,
    ModelNotReady: 503,
    QueueFull: 503,
    Closed: 503,
}


def status_of(error: Exception) -> int:
    """The status of the nearest class in `error`'s hierarchy that STATUS lists."""
    return next(STATUS[cls] for cls in type(error).__mro__ if cls in STATUS)


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def domain_error(request: Request, error: Exception) -> JSONResponse:
        status = status_of(error)
        headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
        return JSONResponse({"detail": str(error)}, status, headers)

    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input back, which fails to serialize for NaN or ±Infinity
        # (a 500) and can be as large as the body; location, message and type are enough.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return JSONResponse({"detail": errors}, 422)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # The last resort. Starlette re-raises the error after this response, so the server
        # (uvicorn) logs its traceback once.
        metrics.errors.labels("unhandled").inc()
        return JSONResponse({"detail": "internal error"}, 500)

    for exception in STATUS:
        app.add_exception_handler(exception, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)
