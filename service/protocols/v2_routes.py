"""Open Inference Protocol v2 over HTTP/REST (kserve/open-inference-protocol `inference_rest.md`),
with Triton's binary tensor data extension. Thin: the codec parses, the data plane serves.

Models as v2 sees them, all from each export's metadata: an image model takes `image` (UINT8
[-1, H, W, 3], raw RGB pixels) or `image_bytes` (BYTES [-1], encoded image files, decoded as
/predict/image does); a feature model takes `features` (FP32 [-1, N]); both answer
`probabilities` (FP32 [-1, classes]) and `label` (BYTES [-1]).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from service.dataplane import DataPlane, Served, version_number
from service.deps import DataPlaneDep
from service.errors import RETRY
from service.faults import UnfitInput
from service.predictor import Predictor
from service.protocols.errors import ERRORS, V2Route
from service.protocols.openapi import json_body
from service.protocols.v2_codec import (
    BYTES,
    Output,
    datatype_of,
    decode_content,
    encode_response,
    parse_request,
)
from service.protocols.v2_types import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)

SERVER_NAME = "cifar-serving"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "tensorflow_savedmodel"  # every model here is a SavedModel export
LABEL = "label"  # the output this service adds: the most probable class, as text
HEADER_LENGTH = "Inference-Header-Content-Length"

# `router` is open to probes and tooling, like /healthz and /models; `inference` takes the API
# key when one is set.
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
    try:
        server_version = version(SERVER_NAME)
    except PackageNotFoundError:  # run from a source tree that is not installed
        server_version = "unknown"
    return ServerMetadata(name=SERVER_NAME, version=server_version, extensions=EXTENSIONS)


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    """The process is up and answering."""
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses={503: {"model": ServerReady}})
async def server_ready(plane: DataPlaneDep):
    """200 once every model is loaded and warmed up; 503 until then."""
    if plane.ready:
        return ServerReady(ready=True)
    return JSONResponse({"ready": False}, 503, RETRY)


# Each model route also answers under /versions/{version}, for that version when it is live;
# without it, `version` may be asked for as a query parameter.


@router.get("/models/{model}", response_model=ModelMetadata, responses=ERRORS)
@router.get("/models/{model}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(model: str, plane: DataPlaneDep, version: str | None = None) -> ModelMetadata:
    """The live version's inputs and outputs."""
    return _metadata(plane.live(model, version_number(model, version)).predictor)


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
    with plane.expecting(served):  # the body may take a while: let a batch wait for it
        body = decode_content(
            await request.body(),
            request.headers.get("content-encoding"),
            request.app.state.settings.max_upload_bytes,
        )
        parsed, tensors = parse_request(body, header_length)
        outputs = _requested_outputs(parsed, predictor)  # refuse unknown outputs before any work
        rows = await _rows(plane, served, tensors)
    classified = await plane.classify(served, rows)
    computed = {
        predictor.output_name: classified.probabilities,
        LABEL: np.array([label.encode() for label in classified.best_labels], object),
    }
    answers = [Output(name, _datatype(computed[name]), computed[name], binary) for name, binary in outputs]
    content, length = encode_response(predictor.name, str(predictor.version), parsed.id, answers)
    if length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})


def _inputs(predictor: Predictor) -> list[MetadataTensor]:
    raw = MetadataTensor(
        name=predictor.input_name,
        datatype=datatype_of(predictor.input_dtype),
        shape=[-1, *predictor.input_shape],
    )
    if predictor.kind != "image":
        return [raw]
    return [raw, MetadataTensor(name=_encoded_input_name(predictor), datatype=BYTES, shape=[-1])]


def _encoded_input_name(predictor: Predictor) -> str:
    """An image model's second input: encoded image files (`image` -> `image_bytes`, the suffix
    TF Serving uses for binary strings)."""
    return f"{predictor.input_name}_bytes"


def _outputs(predictor: Predictor) -> list[MetadataTensor]:
    return [
        MetadataTensor(
            name=predictor.output_name,
            datatype=datatype_of(predictor.output_dtype),
            shape=[-1, len(predictor.labels)],
        ),
        MetadataTensor(name=LABEL, datatype=BYTES, shape=[-1]),
    ]


def _metadata(predictor: Predictor) -> ModelMetadata:
    return ModelMetadata(
        name=predictor.name,
        versions=[str(predictor.version)],
        platform=PLATFORM,
        inputs=_inputs(predictor),
        outputs=_outputs(predictor),
    )


def _requested_outputs(request: InferenceRequest, predictor: Predictor) -> list[tuple[str, bool]]:
    """(name, binary) of each output to answer: those asked for, in order, or all of them."""
    all_binary = bool((request.parameters or {}).get("binary_data_output", False))
    known = [tensor.name for tensor in _outputs(predictor)]
    if not request.outputs:
        return [(name, all_binary) for name in known]
    answers = []
    for output in request.outputs:
        if output.name not in known:
            raise UnfitInput(
                f"unknown output {output.name!r}; model {predictor.name!r} has {', '.join(known)}"
            )
        answers.append((output.name, bool((output.parameters or {}).get("binary_data", all_binary))))
    return answers


async def _rows(plane: DataPlane, served: Served, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The model's input rows from exactly one of its inputs."""
    predictor = served.predictor
    accepted = {tensor.name: tensor for tensor in _inputs(predictor)}
    unknown = sorted(set(tensors) - set(accepted))
    if unknown:
        raise UnfitInput(
            f"unknown input {unknown[0]!r}; model {predictor.name!r} takes {' or '.join(accepted)}"
        )
    if len(tensors) != 1:
        raise UnfitInput(f"model {predictor.name!r} takes one input: {' or '.join(accepted)}")
    ((name, tensor),) = tensors.items()
    expected = accepted[name]
    if (datatype := _datatype(tensor)) != expected.datatype:
        raise UnfitInput(f"input {name!r} must be {expected.datatype}; got {datatype}")
    if expected.datatype == BYTES:
        if tensor.ndim not in (1, 2) or (tensor.ndim == 2 and tensor.shape[1] != 1):
            raise UnfitInput(f"input {name!r} must have shape [n] (or [n, 1]); got {list(tensor.shape)}")
        return await plane.decode_files(served, tensor.ravel().tolist())
    return tensor


def _datatype(array: np.ndarray) -> str:
    return BYTES if array.dtype == object else datatype_of(array.dtype)
