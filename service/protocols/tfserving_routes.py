"""TensorFlow Serving's REST API (tensorflow/serving `g3doc/api_rest.md`), also KServe's v1:
model status, metadata and predict, answering what TF Serving answers for the same export
(the status and metadata from service/protocols/tfserving_model.py).

The export's signature has one input (`image`: uint8 [-1, H, W, 3], or `features`: float32
[-1, N]) and one output, `probabilities`, so `predictions` is a list of probability lists. An
image instance may also be `{"b64": <an encoded image file>}`, decoded as /predict/image does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import jsonbody
from service.dataplane import DataPlane, Served, version_number
from service.deps import DataPlaneDep, RegistryDep
from service.errors import ERRORS, ProtocolRoute
from service.faults import UnfitInput
from service.protocols import tfserving_model
from service.protocols.openapi import json_body
from service.protocols.tensors import numeric_array
from service.protocols.tfserving_codec import binary_value, encode_predict, parse_predict
from service.protocols.tfserving_types import ModelMetadata, ModelStatus, PredictRequest, PredictResponse
from service.responses import JSONResponse


class TFServingRoute(ProtocolRoute):
    protocol = "tfserving"


# `router` is open to probes and tooling; `inference` takes the API key when one is set.
ROUTERS: dict[str, Any] = {
    "prefix": "/v1/models",
    "tags": ["TensorFlow Serving REST"],
    "route_class": TFServingRoute,
}
router, inference = APIRouter(**ROUTERS), APIRouter(**ROUTERS)

PREDICT: dict[str, Any] = {
    "response_model": PredictResponse,
    "responses": ERRORS,
    # TF Serving reads the body as JSON whatever its declared type (`curl -d` sends a form's).
    "openapi_extra": json_body(PredictRequest),
}


# Each model route also answers under /versions/{version}, for that version; without it,
# `version` may be asked for as a query parameter.


@router.get("/{model}", response_model=ModelStatus, responses=ERRORS)
@router.get("/{model}/versions/{version}", response_model=ModelStatus, responses=ERRORS)
async def model_status(model: str, registry: RegistryDep, version: str | None = None) -> ModelStatus:
    """The versions of the model (or the one asked for): the live one AVAILABLE, those that
    failed to load END."""
    return tfserving_model.status(registry.state(model), version_number(model, version))


@router.get("/{model}/metadata", response_model=ModelMetadata, responses=ERRORS)
@router.get("/{model}/versions/{version}/metadata", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(model: str, plane: DataPlaneDep, version: str | None = None) -> ModelMetadata:
    """The live version's serving signature (`version` must be the live one)."""
    return tfserving_model.metadata(plane.live(model, version_number(model, version)).predictor)


@inference.post("/{model}:predict", **PREDICT)
@inference.post("/{model}/versions/{version}:predict", **PREDICT)
async def predict(request: Request, model: str, version: str | None = None) -> Response:
    """Run the live version (`version` must be the live one): `{"instances": [...]}` answers
    `{"predictions": [...]}`, `{"inputs": ...}` answers `{"outputs": ...}`."""
    plane: DataPlane = request.app.state.dataplane
    served = plane.live(model, version_number(model, version))
    with plane.expecting(served):
        body = await jsonbody.read_capped(request, jsonbody.json_cap(served.predictor, plane.max_rows))
        parsed = await jsonbody.parse_off_the_loop(parse_predict, body, served.predictor.input_name)
        tfserving_model.check_signature(served.predictor, parsed.signature_name)
        names = tfserving_model.output_names(served.predictor, parsed.output_filter)
        rows = await _rows(plane, served, parsed.instances)
    classified = await plane.classify(served, rows)
    outputs = tfserving_model.output_values(served.predictor, classified, names)
    return JSONResponse(encode_predict(parsed.form, outputs))


async def _rows(plane: DataPlane, served: Served, instances: list) -> np.ndarray:
    """The instances as the model's rows: numbers, or (image models) `{"b64": ...}` files."""
    predictor = served.predictor
    what = f"input {predictor.input_name!r}"
    files = [binary_value(instance) for instance in instances]
    if all(file is None for file in files):
        return numeric_array(instances, predictor.input_dtype, what)
    decoded = iter(await plane.decode_files(served, [f for f in files if f is not None]))
    rows = []
    for instance, file in zip(instances, files, strict=True):
        row = next(decoded) if file is not None else numeric_array(instance, predictor.input_dtype, what)
        if row.shape != predictor.input_shape:
            raise UnfitInput(f"{what}: each instance must have shape {list(predictor.input_shape)}")
        rows.append(row)
    return np.stack(rows)
