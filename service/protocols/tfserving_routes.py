"""TensorFlow Serving's REST API (tensorflow/serving `g3doc/api_rest.md`), also KServe's v1:
model status, metadata and predict, answering what TF Serving answers for the same export.

The export's signature has one input (`image`: uint8 [-1, H, W, 3], or `features`: float32
[-1, N]) and one output, `probabilities`, so `predictions` is a list of probability lists. An
image instance may also be `{"b64": <an encoded image file>}`, decoded as /predict/image does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from fastapi import APIRouter, Request
from fastapi.responses import Response
from tensorflow.core.framework import types_pb2

from service import jsonbody
from service.deps import RegistryDep
from service.predictor import Predictor
from service.protocols import dataplane
from service.protocols.dataplane import BadInput
from service.protocols.errors import ERRORS, TFServingRoute
from service.protocols.tensors import numeric_array
from service.protocols.tfserving_codec import binary_value, encode_predict, parse_predict
from service.protocols.tfserving_types import (
    ModelMetadata,
    ModelSpec,
    ModelStatus,
    ModelVersionStatus,
    PredictRequest,
    PredictResponse,
    Status,
)
from service.protocols.v2_types import inline_schema
from service.registry import ServedModel, UnknownModel

PREDICT_METHOD = "tensorflow/serving/predict"

router = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving REST"], route_class=TFServingRoute)
inference = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving REST"], route_class=TFServingRoute)

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        # TF Serving reads the body as JSON whatever its declared type (`curl -d` sends a form's).
        "content": {"application/json": {"schema": inline_schema(PredictRequest)}},
    }
}


@router.get("/{model}", response_model=ModelStatus, responses=ERRORS)
async def model_status(model: str, registry: RegistryDep) -> ModelStatus:
    """The versions of the model: the live one AVAILABLE, those that failed to load END."""
    return _status(_served(registry, model), None)


@router.get("/{model}/versions/{version}", response_model=ModelStatus, responses=ERRORS)
async def model_version_status(model: str, version: str, registry: RegistryDep) -> ModelStatus:
    """The state of one version of the model."""
    return _status(_served(registry, model), version)


@router.get("/{model}/metadata", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(model: str, registry: RegistryDep) -> ModelMetadata:
    """The live version's serving signature."""
    return _metadata(dataplane.live_model(registry, model)[1])


@router.get("/{model}/versions/{version}/metadata", response_model=ModelMetadata, responses=ERRORS)
async def model_version_metadata(model: str, version: str, registry: RegistryDep) -> ModelMetadata:
    """The serving signature of `version`, when it is the live one."""
    return _metadata(dataplane.live_model(registry, model, version)[1])


@inference.post(
    "/{model}:predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=PREDICT_BODY
)
async def predict(request: Request, model: str) -> Response:
    """Run the live version: `{"instances": [...]}` answers `{"predictions": [...]}`,
    `{"inputs": ...}` answers `{"outputs": ...}`."""
    return await _predict(request, model, None)


@inference.post(
    "/{model}/versions/{version}:predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=PREDICT_BODY,
)
async def predict_version(request: Request, model: str, version: str) -> Response:
    """Run `version`, when it is the live one."""
    return await _predict(request, model, version)


async def _predict(request: Request, model: str, version: str | None) -> Response:
    served, predictor = dataplane.live_model(request.app.state.registry, model, version)
    with served.live_batcher.expecting():
        body = await jsonbody.read_capped(
            request, jsonbody.json_cap(predictor, request.app.state.settings.max_batch_size)
        )
        parsed = await jsonbody.parse_off_the_loop(parse_predict, body, predictor.input_name)
        signature = predictor.metadata["signature"]
        if parsed.signature_name not in (None, signature):
            raise BadInput(f"no signature {parsed.signature_name!r}; the export serves {signature!r}")
        rows = await _rows(request, predictor, parsed.instances)
    probabilities = await dataplane.classify(served, predictor, rows)
    return Response(encode_predict(parsed.form, probabilities), media_type="application/json")


async def _rows(request: Request, predictor: Predictor, instances: list) -> np.ndarray:
    max_rows = request.app.state.settings.max_batch_size
    dataplane.check_count(len(instances), max_rows)
    what = f"input {predictor.input_name!r}"
    files = [binary_value(instance) for instance in instances]
    if all(file is None for file in files):
        return dataplane.check_rows(
            numeric_array(instances, predictor.input_dtype, what), predictor, max_rows
        )
    if predictor.kind != "image":
        raise BadInput(f"model {predictor.name!r} takes numbers; binary values are for image models")
    decoded = iter(await dataplane.decode_images(request, predictor, [f for f in files if f is not None]))
    rows = []
    for instance, file in zip(instances, files, strict=True):
        row = next(decoded) if file is not None else numeric_array(instance, predictor.input_dtype, what)
        if row.shape != predictor.input_shape:
            raise BadInput(f"{what}: each instance must have shape {list(predictor.input_shape)}")
        rows.append(row)
    return dataplane.check_rows(np.stack(rows), predictor, max_rows)


def _served(registry, name: str) -> ServedModel:
    served = registry.models.get(name)
    if served is None:
        raise UnknownModel(f"no model named {name!r}")
    return served


def _status(served: ServedModel, version: str | None) -> ModelStatus:
    live = served.predictor
    versions = []
    if live is not None:
        versions.append(
            ModelVersionStatus(version=str(live.version), state="AVAILABLE", status=Status(error_code="OK"))
        )
    for number, why in sorted(served.failed.items(), reverse=True):
        versions.append(
            ModelVersionStatus(
                version=str(number), state="END", status=Status(error_code="UNKNOWN", error_message=why)
            )
        )
    if version is not None:
        versions = [v for v in versions if v.version == version]
        if not versions:
            raise UnknownModel(f"model {served.name!r} has no version {version!r} loaded or rejected")
        return ModelStatus(model_version_status=versions, ready=versions[0].state == "AVAILABLE")
    return ModelStatus(model_version_status=versions, ready=live is not None)


def _tensor_info(dtype: np.dtype, shape: list) -> dict:
    return {
        "dtype": types_pb2.DataType.Name(tf.dtypes.as_dtype(dtype).as_datatype_enum),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape],
            "unknown_rank": False,
        },
    }


def _metadata(predictor: Predictor) -> ModelMetadata:
    spec, output = predictor.metadata["input"], predictor.metadata["output"]
    signature = {
        "inputs": {spec["name"]: _tensor_info(predictor.input_dtype, spec["shape"])},
        "outputs": {output["name"]: _tensor_info(np.dtype(output["dtype"]), output["shape"])},
        "method_name": PREDICT_METHOD,
    }
    return ModelMetadata(
        model_spec=ModelSpec(name=predictor.name, version=str(predictor.version)),
        metadata={"signature_def": {"signature_def": {predictor.metadata["signature"]: signature}}},
    )
