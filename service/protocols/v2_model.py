"""Models as Open Inference Protocol v2 sees them, whatever the wire (REST or gRPC): the server's
and each model's metadata, a request's input tensors as the data plane's rows, and its answer as
output tensors. Arrays in and out; the codecs and the doors deal in bytes and messages.

All from each export's metadata: an image model takes `image` (UINT8 [-1, H, W, 3], raw RGB
pixels) or `image_bytes` (BYTES [-1], encoded image files, decoded as /predict/image does); a
feature model takes `features` (FP32 [-1, N]); both answer `probabilities` (FP32 [-1, classes])
and `label` (BYTES [-1]).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np

from service.dataplane import Classified, DataPlane, Served
from service.faults import UnfitInput
from service.predictor import Predictor
from service.protocols.tensors import encoded_files
from service.protocols.v2_codec import BYTES, datatype_of
from service.protocols.v2_types import MetadataTensor, ModelMetadata, ServerMetadata

SERVER_NAME = "cifar-serving"
EXTENSIONS = ["binary_tensor_data"]
# What computes the answers (service/runtimes.py), by the names Triton gives its backends.
PLATFORMS = {"savedmodel": "tensorflow_savedmodel", "tflite": "tflite"}
LABEL = "label"  # the output this service adds: the most probable class, as text
ABSTAIN = "abstain"  # and, beside a model's out-of-distribution score, whether it passes the threshold


def server_metadata() -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    try:
        server_version = version(SERVER_NAME)
    except PackageNotFoundError:  # run from a source tree that is not installed
        server_version = "unknown"
    return ServerMetadata(name=SERVER_NAME, version=server_version, extensions=EXTENSIONS)


def metadata(predictor: Predictor) -> ModelMetadata:
    """The model's name, version, platform, inputs and outputs."""
    return ModelMetadata(
        name=predictor.name,
        versions=[str(predictor.version)],
        platform=platform(predictor),
        inputs=inputs(predictor),
        outputs=outputs(predictor),
    )


def platform(predictor: Predictor) -> str:
    """The runtime that answers: `tensorflow_savedmodel`, or `tflite` for the export's TFLite form
    (/models names which form)."""
    return PLATFORMS[predictor.runtime.format]


def inputs(predictor: Predictor) -> list[MetadataTensor]:
    """The inputs the model takes, one per request: its raw rows, or (image models) encoded files."""
    raw = MetadataTensor(
        name=predictor.input_name,
        datatype=datatype_of(predictor.input_dtype),
        shape=[-1, *predictor.input_shape],
    )
    if predictor.kind != "image":
        return [raw]
    return [raw, MetadataTensor(name=encoded_input_name(predictor), datatype=BYTES, shape=[-1])]


def encoded_input_name(predictor: Predictor) -> str:
    """An image model's second input: encoded image files (`image` -> `image_bytes`, the suffix
    TF Serving uses for binary strings)."""
    return f"{predictor.input_name}_bytes"


def outputs(predictor: Predictor) -> list[MetadataTensor]:
    """The outputs the model answers: its probabilities, and the most probable label; where the
    model declares an out-of-distribution score, the score and whether it abstains."""
    answered = [
        MetadataTensor(
            name=predictor.output_name,
            datatype=datatype_of(predictor.output_dtype),
            shape=[-1, len(predictor.labels)],
        ),
        MetadataTensor(name=LABEL, datatype=BYTES, shape=[-1]),
    ]
    if predictor.ood is not None:
        answered.append(MetadataTensor(name=predictor.ood.output, datatype="FP32", shape=[-1]))
        answered.append(MetadataTensor(name=ABSTAIN, datatype="BOOL", shape=[-1]))
    return answered


def output_names(predictor: Predictor, asked: list[str]) -> list[str]:
    """The outputs to answer: those asked for, in order, or all of them; UnfitInput for one the
    model does not have."""
    known = [tensor.name for tensor in outputs(predictor)]
    if unknown := [name for name in asked if name not in known]:
        raise UnfitInput(f"unknown output {unknown[0]!r}; model {predictor.name!r} has {', '.join(known)}")
    return asked or known


def output_values(predictor: Predictor, classified: Classified) -> dict[str, np.ndarray]:
    """Each output's tensor, by name, for the model's answer."""
    values = {
        predictor.output_name: classified.probabilities,
        LABEL: np.array([label.encode() for label in classified.best_labels], object),
    }
    if predictor.ood is not None and classified.ood_score is not None:
        values[predictor.ood.output] = classified.ood_score.astype(np.float32)
        values[ABSTAIN] = np.array(classified.abstain, np.bool_)
    return values


async def rows(plane: DataPlane, served: Served, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The model's input rows from exactly one of its inputs: raw rows as they are (the data
    plane checks them), encoded image files decoded."""
    predictor = served.predictor
    accepted = {tensor.name: tensor for tensor in inputs(predictor)}
    unknown = sorted(set(tensors) - set(accepted))
    if unknown:
        raise UnfitInput(
            f"unknown input {unknown[0]!r}; model {predictor.name!r} takes {' or '.join(accepted)}"
        )
    if len(tensors) != 1:
        raise UnfitInput(f"model {predictor.name!r} takes one input: {' or '.join(accepted)}")
    ((name, tensor),) = tensors.items()
    expected = accepted[name]
    if (given := datatype(tensor)) != expected.datatype:
        raise UnfitInput(f"input {name!r} must be {expected.datatype}; got {given}")
    if expected.datatype == BYTES:
        return await plane.decode_files(served, encoded_files(tensor, name))
    return tensor


def datatype(array: np.ndarray) -> str:
    """The v2 datatype of a decoded tensor: BYTES for an array of byte strings."""
    return BYTES if array.dtype == object else datatype_of(array.dtype)
