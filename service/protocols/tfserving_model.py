"""Models as TensorFlow Serving sees them, whatever the wire (REST or gRPC): each model's version
status and its serving signature. The REST routes answer these as JSON; the gRPC servicers as
protobuf messages, whose JSON form they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.dataplane import Classified
from service.faults import UnfitInput
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
# Beside a model's out-of-distribution score the service answers whether it passes the threshold
# (not a signature output: the threshold is the model's metadata, applied by the service).
ABSTAIN = "abstain"


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


@dataclass(frozen=True)
class Tensor:
    """A tensor of the serving signature (a SignatureDef's TensorInfo), whatever the wire."""

    dtype: np.dtype
    shape: list[int | None]  # None: any size


@dataclass(frozen=True)
class Signature:
    """The export's one serving signature (a SignatureDef), whatever the wire: REST writes it
    as JSON (`metadata`), gRPC as TensorFlow's protobuf, of which that JSON is the JSON form."""

    name: str
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    method_name: str = PREDICT_METHOD


def signature(predictor: Predictor) -> Signature:
    """The export's input and output tensors, and the out-of-distribution score where it has one."""
    contract = predictor.contract
    outputs = {contract.output.name: Tensor(predictor.output_dtype, contract.output.shape)}
    if predictor.ood is not None:
        outputs[predictor.ood.output] = Tensor(np.dtype(np.float32), [None])
    inputs = {contract.input.name: Tensor(predictor.input_dtype, contract.input.shape)}
    return Signature(contract.signature, inputs, outputs)


def metadata(predictor: Predictor) -> ModelMetadata:
    """The model's spec, its one serving signature and, as `runtime`, what computes the answers:
    "savedmodel" or the export's fast form (e.g. "tflite-int8")."""
    served = signature(predictor)
    described = {
        "inputs": {name: tensor_info(t.dtype, t.shape) for name, t in served.inputs.items()},
        "outputs": {name: tensor_info(t.dtype, t.shape) for name, t in served.outputs.items()},
        "method_name": served.method_name,
    }
    return ModelMetadata(
        model_spec=ModelSpec(name=predictor.name, version=str(predictor.version)),
        metadata={
            "signature_def": {"signature_def": {served.name: described}},
            RUNTIME: predictor.runtime_name,
        },
    )


def check_signature(predictor: Predictor, asked: str | None) -> None:
    """UnfitInput unless `asked` names the export's one signature; none (or "", which TF Serving
    takes for its default) asks for it."""
    signature = predictor.contract.signature
    if asked and asked != signature:
        raise UnfitInput(f"no signature {asked!r}; the export serves {signature!r}")


def output_names(predictor: Predictor, asked: list[str]) -> list[str]:
    """The outputs a predict answers: the probabilities unless others are asked for (an
    out-of-distribution score and `abstain`, where the model has them); UnfitInput for one it
    does not have."""
    known = [predictor.output_name]
    if predictor.ood is not None:
        known += [predictor.ood.output, ABSTAIN]
    if unknown := [name for name in asked if name not in known]:
        raise UnfitInput(f"unknown output {unknown[0]!r}; the signature has {', '.join(map(repr, known))}")
    return asked or [predictor.output_name]


def output_values(predictor: Predictor, classified: Classified, names: list[str]) -> dict[str, np.ndarray]:
    """The values of the outputs `names`, by name."""
    values = {predictor.output_name: classified.probabilities}
    if predictor.ood is not None and classified.ood_score is not None:
        values[predictor.ood.output] = classified.ood_score
        values[ABSTAIN] = np.array(classified.abstain, np.bool_)
    return {name: values[name] for name in names}
