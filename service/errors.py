"""The one fault table, and how every door answers a fault from it: each fault's HTTP status
and message, the gRPC status code of each HTTP status, and the shape of an error per protocol.
The service's own routes answer `{"detail": "<message>"}`; the protocols' REST routes
(`ProtocolRoute`) `{"error": "<message>"}` with the same status and message; their gRPC
services the code of that status with the same message (service/protocols/grpc_server.py, one
interceptor for every RPC). A failure that is no fault of the client's is a bug: 500, logged,
counted, by `internal_error` at every door.

The faults themselves are raised below the doors (service/faults.py for the codecs' and the
data plane's, and the registry's, batchers' and decoders' own), which import nothing of this."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import cast

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from service.batching import Closed, DeadlineExceeded, QueueFull
from service.budget import BudgetExceeded, DecoderBusy
from service.faults import (
    BodyTooLarge,
    CodecError,
    TooManyRows,
    Unauthenticated,
    UnfitInput,
    validation_message,
)
from service.images import ImageTooLarge, UndecodableImage, UnsupportedImage
from service.metrics import Metrics
from service.registry import ModelNotReady, UnknownModel
from service.responses import JSONResponse
from service.schemas import FEATURES_FORMS, FEATURES_TAGS

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"  # what a 503 tells a client to wait before retrying
RETRY = {"Retry-After": RETRY_AFTER_S}
CHALLENGE = {"WWW-Authenticate": "Bearer"}  # how a 401 says which credentials it wants

# Each fault and the HTTP status it means; a subclass means what its nearest listed ancestor
# means (see `status_of`); anything else is a bug, 500.
STATUS: dict[type[Exception], int] = {
    CodecError: 400,  # a malformed body: not JSON, bad base64, a wrong binary layout
    UndecodableImage: 400,  # empty, truncated or corrupt
    Unauthenticated: 401,
    UnknownModel: 404,  # UnknownVersion too
    # (HTTPExceptions carry their own: 408 and 413 body limits, 415 media type; REST's alone)
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

# nginx's "client closed request": a request or call whose client went away before its answer,
# counted under this status (service/middleware.py, grpc_server.py) but never sent.
CLIENT_CLOSED_REQUEST = 499

# The gRPC status code of each HTTP status above, for every RPC of every gRPC service (the
# codes a gRPC client branches on). A status a fault may mean must be here: the tests check.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,  # malformed: bad binary layout, undecodable image
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,  # no such model, or version not live
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # too many rows, too many pixels
    415: grpc.StatusCode.INVALID_ARGUMENT,  # not an image format the service decodes
    422: grpc.StatusCode.INVALID_ARGUMENT,  # well-formed but unfit: shape, datatype, values
    CLIENT_CLOSED_REQUEST: grpc.StatusCode.CANCELLED,  # the client went away
    500: grpc.StatusCode.INTERNAL,  # a bug: "internal error", logged
    503: grpc.StatusCode.UNAVAILABLE,  # loading, queue full, closing, too much work ahead: retry
    504: grpc.StatusCode.DEADLINE_EXCEEDED,  # still waiting for the model at the call's deadline
}


def status_of(error: BaseException) -> int:
    """The status of the nearest class in `error`'s hierarchy that STATUS lists; 500 for a bug."""
    return next((STATUS[cls] for cls in type(error).__mro__ if cls in STATUS), 500)


def grpc_code_of(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status the service answers."""
    return GRPC_CODES[status]


def status_of_grpc_code(code: grpc.StatusCode) -> int:
    """The HTTP status a gRPC code stands for (the first that maps to it), 500 if none does:
    how an RPC another layer aborted (health's NOT_FOUND) is counted."""
    return next((status for status, known in GRPC_CODES.items() if known == code), 500)


def retry_after(error: BaseException | None = None) -> str:
    """Seconds a 503 tells its client to wait: for a full queue, until the rows ahead are done."""
    return str(error.retry_after_s) if isinstance(error, QueueFull) else RETRY_AFTER_S


def headers_of(
    status: int, headers: dict[str, str] | None = None, error: BaseException | None = None
) -> dict[str, str] | None:
    """A 503 says when to retry, a 401 which credentials it wants (over gRPC: trailing metadata)."""
    extra = {"Retry-After": retry_after(error)} if status == 503 else CHALLENGE if status == 401 else {}
    return {**(headers or {}), **extra} if extra else headers


INTERNAL_ERROR = "internal error"


def internal_error(metrics: Metrics, where: str, error: BaseException | None = None) -> tuple[int, str]:
    """A failure that is not the client's doing (a bug), at any door: counted, logged with its
    traceback (unless `error` is None: the server logs it), and answered 500 "internal error",
    without a word of what failed to the client."""
    if error is not None:
        log.error("%s failed", where, exc_info=error)
    metrics.errors.labels("unhandled").inc()
    return 500, INTERNAL_ERROR


def error_response(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    error: BaseException | None = None,
    key: str = "error",
) -> JSONResponse:
    """`{key: message}` with `status` and its headers: "error" for the protocols, "detail" for
    the service's own routes."""
    return JSONResponse({key: message}, status, headers_of(status, dict(headers or {}), error))


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
        return error_response(status, message, headers, error, key="error" if protocol else "detail")

    async def domain_error(request: Request, error: Exception) -> JSONResponse:
        return answer(request, status_of(error), str(error), error=error)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        error = cast(HTTPException, error)
        message = str(error.detail)
        if error.status_code == 405:  # Starlette's bare "Method Not Allowed": say what is
            allowed = (error.headers or {}).get("Allow") or "no other method"
            message = f"method not allowed: {request.url.path} takes {allowed} (see /docs)"
        return answer(request, error.status_code, message, error.headers)

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
        return answer(request, *internal_error(metrics, f"{request.method} {request.url.path}"))

    for exception in STATUS:
        app.add_exception_handler(exception, domain_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)


class ProtocolError(BaseModel):
    """Every failure of both protocols: `{"error": "..."}`."""

    error: str


# Documented per protocol route, 422 included in this shape ("4XX" for the rest): FastAPI's own
# validation-error schema never applies there (invalid requests are 400s).
ERRORS = {status: {"model": ProtocolError} for status in (400, 401, 404, 408, 413, 415, 422, 503, 504, "4XX")}


class ProtocolRoute(APIRoute):
    """A protocol's route (v2, TF Serving): its failures answered `{"error": ...}`, an invalid
    request as a 400 (the protocols' status for a malformed request) rather than FastAPI's 422;
    `protocol` labels its metrics. A route class, so the service's own routes keep theirs."""

    protocol = "native"

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer_errors_as_the_protocol_does(request: Request):
            try:
                return await handler(request)
            except HTTPException as error:  # the API key, and the routes' own
                return error_response(error.status_code, str(error.detail), error.headers)
            except RequestValidationError as error:
                return error_response(400, validation_message(error.errors()))
            except tuple(STATUS) as error:
                return error_response(status_of(error), str(error), error=error)
            except Exception as error:  # answered here, not re-raised: the connection stays open
                metrics = request.app.state.metrics
                return error_response(*internal_error(metrics, f"{request.method} {request.url.path}", error))

        return answer_errors_as_the_protocol_does
