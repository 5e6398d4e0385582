"""Protocol errors: `{"error": "..."}`, the shape both v2 and TF Serving use, with the status
the one error table (`service.errors.STATUS`) gives each fault. A route class, so the service's
own routes keep `{"detail": ...}`, and an invalid request is answered here as a 400 (the
protocols' status for a malformed request) rather than FastAPI's 422."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from service.errors import STATUS, headers_of, status_of
from service.faults import validation_message
from service.responses import JSONResponse

log = logging.getLogger(__name__)


class ProtocolError(BaseModel):
    """Every failure of both protocols: `{"error": "..."}`."""

    error: str


# Documented per route, 422 included in this shape ("4XX" for the rest): FastAPI's own
# validation-error schema never applies here (invalid requests are 400s).
ERRORS = {status: {"model": ProtocolError} for status in (400, 401, 404, 408, 413, 415, 422, 503, 504, "4XX")}


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, error: BaseException | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers_of(status, dict(headers or {}), error))


class ProtocolRoute(APIRoute):
    """A route whose failures are answered as its protocol says; `protocol` labels its metrics."""

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
            except Exception:  # a bug, not the client's doing: counted and logged as the app does
                log.exception("%s %s failed", request.method, request.url.path)
                request.app.state.metrics.errors.labels("unhandled").inc()
                return error_response(500, "internal error")

        return answer_errors_as_the_protocol_does


class V2Route(ProtocolRoute):
    protocol = "v2"


class TFServingRoute(ProtocolRoute):
    protocol = "tfserving"
