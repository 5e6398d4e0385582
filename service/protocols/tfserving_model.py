"""Models as TensorFlow Serving sees them, whatever the wire (REST or gRPC): each model's version
status and its serving signature. The REST routes answer these as JSON; the gRPC servicers as
protobuf messages, whose JSON form they are.
"""

from __future__ import annotations

from service.predictor import Predictor
from service.protocols.tfserving_codec import tensor_info
from service.protocols.tfserving_types import (
    ModelMetadata,
    ModelSpec,
    ModelStatus,
    ModelVersionStatus,
    Status,
)
from service.registry import ModelState, UnknownModel

PREDICT_METHOD = "tensorflow/serving/predict"
RUNTIME = "runtime"  # a metadata entry of this service's own; TF Serving's clients read signature_def


def status(state: ModelState, version: int | None) -> ModelStatus:
    """The model's versions (or only `version`, UnknownModel when it has no such one): the live
    one AVAILABLE, those that failed to load END with why."""
    versions = []
    if state.live is not None:
        versions.append(
            ModelVersionStatus(
                version=str(state.live.version), state="AVAILABLE", status=Status(error_code="OK")
            )
        )
    for number, why in sorted(state.rejected.items(), reverse=True):
        versions.append(
            ModelVersionStatus(
                version=str(number), state="END", status=Status(error_code="UNKNOWN", error_message=why)
            )
        )
    if version is not None:
        versions = [v for v in versions if v.version == str(version)]
        if not versions:
            raise UnknownModel(f"model {state.name!r} has no version {version} loaded or rejected")
        return ModelStatus(model_version_status=versions, ready=versions[0].state == "AVAILABLE")
    return ModelStatus(model_version_status=versions, ready=state.live is not None)


def metadata(predictor: Predictor) -> ModelMetadata:
    """The model's spec, its one serving signature (the export's input and output tensors) and, as
    `runtime`, what computes the answers: "savedmodel" or the export's fast form (e.g. "tflite-int8")."""
    contract = predictor.contract
    signature = {
        "inputs": {contract.input.name: tensor_info(predictor.input_dtype, contract.input.shape)},
        "outputs": {contract.output.name: tensor_info(predictor.output_dtype, contract.output.shape)},
        "method_name": PREDICT_METHOD,
    }
    return ModelMetadata(
        model_spec=ModelSpec(name=predictor.name, version=str(predictor.version)),
        metadata={
            "signature_def": {"signature_def": {contract.signature: signature}},
            RUNTIME: predictor.runtime_name,
        },
    )
