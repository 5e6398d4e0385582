"""Open Inference Protocol v2 over HTTP/REST (kserve/open-inference-protocol `inference_rest.md`),
with Triton's binary tensor data extension. Thin: the codec parses, service/protocols/v2_model.py
says what the models take and answer, the data plane serves.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from service import deadlines, jsonbody
from service.dataplane import DataPlane, version_number
from service.deps import DataPlaneDep, RegistryDep
from service.errors import ERRORS, RETRY, ProtocolRoute
from service.faults import BodyTooLarge
from service.predictor import Predictor
from service.protocols import v2_model
from service.protocols.openapi import json_body
from service.protocols.v2_codec import Output, decode_content, encode_response, parse_request
from service.protocols.v2_types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from service.responses import JSONResponse

HEADER_LENGTH = "Inference-Header-Content-Length"


# `router` is open to probes and tooling, like /healthz and /models; `inference` takes the API
# key when one is set.
class V2Route(ProtocolRoute):
    protocol = "v2"


ROUTERS: dict[str, Any] = {"prefix": "/v2", "tags": ["Open Inference Protocol v2"], "route_class": V2Route}
router, inference = APIRouter(**ROUTERS), APIRouter(**ROUTERS)

BINARY_REQUEST = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": f"binary tensor data extension: the JSON request ({HEADER_LENGTH} bytes),"
        " then the raw tensors of the inputs with `binary_data_size`, in order",
    }
}
INFER_BODY = json_body(InferenceRequest, {"application/octet-stream": BINARY_REQUEST})
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            }
        },
        "description": "JSON, or with outputs asked for as `binary_data`, the JSON response"
        f" ({HEADER_LENGTH} bytes) followed by those outputs' raw tensors",
    },
    **ERRORS,
}


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return v2_model.server_metadata()


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    """The process is up and answering."""
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses={503: {"model": ServerReady}})
async def server_ready(registry: RegistryDep):
    """200 while the replica is ready, as /readyz; 503 otherwise."""
    if registry.ready:
        return ServerReady(ready=True)
    return JSONResponse({"ready": False}, 503, RETRY)


# Each model route also answers under /versions/{version}, for that version when it is live;
# without it, `version` may be asked for as a query parameter.


@router.get("/models/{model}", response_model=ModelMetadata, responses=ERRORS)
@router.get("/models/{model}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(model: str, plane: DataPlaneDep, version: str | None = None) -> ModelMetadata:
    """The live version's inputs and outputs."""
    return v2_model.metadata(plane.live(model, version_number(model, version)).predictor)


@router.get("/models/{model}/ready", response_model=ModelReady, responses=ERRORS)
@router.get("/models/{model}/versions/{version}/ready", response_model=ModelReady, responses=ERRORS)
async def model_ready(model: str, plane: DataPlaneDep, version: str | None = None) -> ModelReady:
    """200 when the model has a live version; 503 while it has none; 404 for an unknown model
    or a version that is not the live one (naming the live one)."""
    plane.live(model, version_number(model, version))
    return ModelReady(name=model, ready=True)


InferenceHeaderLength = Annotated[
    int | None,
    Header(alias=HEADER_LENGTH, ge=0, description="length of the JSON part of a binary-extension body"),
]


@inference.post(
    "/models/{model}/infer", response_model=None, responses=INFER_RESPONSES, openapi_extra=INFER_BODY
)
@inference.post(
    "/models/{model}/versions/{version}/infer",
    response_model=None,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def infer(
    request: Request, model: str, version: str | None = None, header_length: InferenceHeaderLength = None
) -> Response:
    """Run the live version on the request's inputs."""
    plane: DataPlane = request.app.state.dataplane
    served = plane.live(model, version_number(model, version))
    predictor = served.predictor
    json_cap = jsonbody.json_cap(predictor, plane.max_rows)
    with plane.expecting(served):  # the body may take a while: let a batch wait for it
        if header_length is None:  # all JSON: its own cap; else binary tensors follow the JSON
            body = await jsonbody.read_capped(request, json_cap)
        elif header_length > json_cap:
            raise BodyTooLarge(f"{HEADER_LENGTH} {header_length} over the {json_cap} bytes of JSON allowed")
        else:
            body = await request.body()
        inflated_cap = json_cap if header_length is None else request.app.state.settings.max_upload_bytes
        body = decode_content(body, request.headers.get("content-encoding"), inflated_cap)
        parsed, tensors = await jsonbody.parse_off_the_loop(
            parse_request,
            body,
            header_length,
            plane.max_rows,
            plane.max_rows * math.prod(predictor.input_shape),
        )
        outputs = _requested_outputs(parsed, predictor)  # refuse unknown outputs before any work
        deadlines.answer_within_microseconds((parsed.parameters or {}).get("timeout", 0))
        rows = await v2_model.rows(plane, served, tensors)
    classified = await plane.classify(served, rows)
    computed = v2_model.output_values(predictor, classified)
    answers = [
        Output(name, v2_model.datatype(computed[name]), computed[name], binary) for name, binary in outputs
    ]
    content, length = encode_response(predictor.name, str(predictor.version), parsed.id, answers)
    if length is None:
        return JSONResponse(content)
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})


def _requested_outputs(request: InferenceRequest, predictor: Predictor) -> list[tuple[str, bool]]:
    """(name, binary) of each output to answer: those asked for, in order, or all of them."""
    all_binary = bool((request.parameters or {}).get("binary_data_output", False))
    asked = request.outputs or []
    names = v2_model.output_names(predictor, [output.name for output in asked])
    if not asked:
        return [(name, all_binary) for name in names]
    return [(output.name, bool((output.parameters or {}).get("binary_data", all_binary))) for output in asked]
