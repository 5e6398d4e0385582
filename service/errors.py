"""The one error table: each fault's HTTP status, whichever door it came in by, answered on the
service's own routes as `{"detail": "<message>"}` (the protocols answer `{"error": ...}` with
the same status and message, `service.protocols.errors`)."""

from __future__ import annotations

from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.batching import Closed, DeadlineExceeded, QueueFull
from service.budget import BudgetExceeded, DecoderBusy
from service.faults import BodyTooLarge, CodecError, TooManyRows, UnfitInput, validation_message
from service.images import ImageTooLarge, UndecodableImage, UnsupportedImage
from service.metrics import Metrics
from service.registry import ModelNotReady, UnknownModel
from service.responses import JSONResponse
from service.schemas import FEATURES_FORMS, FEATURES_TAGS

RETRY_AFTER_S = "1"  # what a 503 tells a client to wait before retrying
RETRY = {"Retry-After": RETRY_AFTER_S}

# Each fault and the HTTP status it means; a subclass means what its nearest listed ancestor
# means (see `status_of`).
STATUS: dict[type[Exception], int] = {
    CodecError: 400,  # a malformed body: not JSON, bad base64, a wrong binary layout
    UndecodableImage: 400,  # empty, truncated or corrupt
    UnknownModel: 404,  # UnknownVersion too
    # (HTTPExceptions carry their own: 401 API key, 408 and 413 body limits, 415 media type)
    BodyTooLarge: 413,
    ImageTooLarge: 413,  # over the pixel cap
    BudgetExceeded: 413,  # over the decode budget, or the pixels one request may decode
    TooManyRows: 413,
    UnsupportedImage: 415,  # not an image in an accepted format
    UnfitInput: 422,  # wrong shape or datatype, no rows, features or outputs not finite
    ModelNotReady: 503,
    QueueFull: 503,  # the queue is full, or would not reach the request before its deadline
    Closed: 503,  # Crashed too
    DecoderBusy: 503,  # the worker's decode budget stayed taken
    DeadlineExceeded: 504,  # still waiting for the model at the request's deadline
}


def status_of(error: Exception) -> int:
    """The status of the nearest class in `error`'s hierarchy that STATUS lists."""
    return next(STATUS[cls] for cls in type(error).__mro__ if cls in STATUS)


def retry_after(error: BaseException | None = None) -> str:
    """Seconds a 503 tells its client to wait: for a full queue, until the rows ahead are done."""
    return str(error.retry_after_s) if isinstance(error, QueueFull) else RETRY_AFTER_S


def headers_of(
    status: int, headers: dict[str, str] | None = None, error: BaseException | None = None
) -> dict[str, str] | None:
    """A 503 says when to retry."""
    return {**(headers or {}), "Retry-After": retry_after(error)} if status == 503 else headers


def _feature_names(request: Request) -> str:
    """` (a, b, c)`: the features by name model `{model}` of the request's path takes, if any."""
    try:
        served = request.app.state.registry.get(request.path_params.get("model", ""))
    except (UnknownModel, ModelNotReady):
        return ""
    names = served.predictor.feature_names
    return f" ({', '.join(names)})" if names else ""


def add_error_handlers(app: FastAPI, metrics: Metrics, protocol_prefixes: tuple[str, ...] = ()) -> None:
    """Native `{"detail": ...}` answers; under `protocol_prefixes`, where no protocol route
    matched (an unknown path or method), `{"error": ...}`, so a protocol's client reads its own
    shape."""

    def answer(request: Request, status: int, message: str, headers=None, error=None) -> JSONResponse:
        path = request.url.path
        protocol = any(path == prefix or path.startswith(f"{prefix}/") for prefix in protocol_prefixes)
        key = "error" if protocol else "detail"
        return JSONResponse({key: message}, status, headers_of(status, headers, error))

    async def domain_error(request: Request, error: Exception) -> JSONResponse:
        return answer(request, status_of(error), str(error), error=error)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        error = cast(HTTPException, error)
        return answer(request, error.status_code, str(error.detail), error.headers)

    async def invalid_request(request: Request, error: Exception) -> JSONResponse:
        # FastAPI's default echoes the input back, which fails to serialize for NaN or ±Infinity
        # (a 500) and can be as large as the body; where and what is enough.
        errors = cast(RequestValidationError, error).errors()
        message = validation_message(errors, tags=FEATURES_TAGS)
        # A features request's form is chosen by its keys: say which forms, and names, there are.
        if any(len(e["loc"]) > 1 and e["loc"][0] == "body" and e["loc"][1] in FEATURES_TAGS for e in errors):
            message += f"; {FEATURES_FORMS}{_feature_names(request)}"
        return answer(request, 422, message)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # The last resort. Starlette re-raises the error after this response, so the server
        # (uvicorn) logs its traceback once.
        metrics.errors.labels("unhandled").inc()
        return answer(request, 500, "internal error")

    for exception in STATUS:
        app.add_exception_handler(exception, domain_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)
