"""Protocol errors: `{"error": "..."}`, the shape both v2 and TF Serving use, with the status
that says whose fault it is. A route class, so the service's own routes keep `{"detail": ...}`
and FastAPI's 422 for invalid requests never reaches these routes (the protocols say 400)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import cast

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from service.batching import Closed, QueueFull
from service.errors import RETRY_AFTER_S
from service.images import ImageRejected
from service.protocols.dataplane import BadInput
from service.protocols.v2_codec import BodyTooLarge, CodecError
from service.registry import ModelNotReady, UnknownModel

log = logging.getLogger(__name__)

STATUS: dict[type[Exception], int] = {  # the first match counts
    BodyTooLarge: 413,
    BadInput: 400,
    CodecError: 400,
    ImageRejected: 400,
    RequestValidationError: 400,
    UnknownModel: 404,
    ModelNotReady: 503,
    QueueFull: 503,
    Closed: 503,
}


def status_of(error: Exception) -> int | None:
    """The HTTP status that `error` means to every protocol; None for a bug."""
    return next((status for kind, status in STATUS.items() if isinstance(error, kind)), None)


class ProtocolError(BaseModel):
    """Every failure of both protocols: `{"error": "..."}`."""

    error: str


# Documented per route; "4XX" also keeps FastAPI from documenting its 422, never answered here.
ERRORS = {status: {"model": ProtocolError} for status in (400, 401, 404, 408, 413, 503, "4XX")}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if status == 503:
        headers = {**(headers or {}), "Retry-After": RETRY_AFTER_S}
    return JSONResponse({"error": message}, status, headers)


def _message(error: Exception) -> str:
    if isinstance(error, RequestValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error.detail) if isinstance(error, HTTPException) else str(error)


class ProtocolRoute(APIRoute):
    """A route whose failures are answered as its protocol says; `protocol` labels its metrics."""

    protocol = "native"

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer_errors_as_the_protocol_does(request: Request):
            try:
                return await handler(request)
            except HTTPException as error:  # API key, body limits, and the routes' own
                return error_response(error.status_code, _message(error), error.headers)
            except tuple(STATUS) as error:
                return error_response(cast(int, status_of(error)), _message(error))
            except Exception:  # a bug, not the client's doing: counted and logged as the app does
                log.exception("%s %s failed", request.method, request.url.path)
                request.app.state.metrics.errors.labels("unhandled").inc()
                return error_response(500, "internal error")

        return answer_errors_as_the_protocol_does


class V2Route(ProtocolRoute):
    protocol = "v2"


class TFServingRoute(ProtocolRoute):
    protocol = "tfserving"
