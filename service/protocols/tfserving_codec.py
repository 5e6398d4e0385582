"""TensorFlow Serving's REST predict format (row `instances` and columnar `inputs`), to the
values of one input tensor and back. Pure functions; nothing here knows a model.

Binary values are `{"b64": "..."}`. As in TF Serving, JSON may carry NaN and ±Infinity.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.faults import CodecError, validation_message
from service.protocols.tfserving_types import PredictRequest

ROW, COLUMNAR = "row", "columnar"
# TensorFlow's names (tensorflow/core/framework/types.proto) of the dtypes a signature may use.
TF_DTYPES = {
    "bool": "DT_BOOL",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
}


@dataclass(frozen=True)
class Predict:
    """A predict request: its format (the answer uses the same) and one value per instance."""

    form: str
    instances: list[Any]
    signature_name: str | None
    output_filter: list[str] = field(default_factory=list)  # the outputs asked for; none: the default


def parse_predict(body: bytes, input_name: str) -> Predict:
    """The instances of the single input `input_name`, whichever format the body uses."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise CodecError(f"body is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise CodecError('body must be a JSON object with "instances" or "inputs"')
    try:
        request = PredictRequest.model_validate(parsed)
    except ValidationError as error:
        raise CodecError(validation_message(error.errors(include_input=False))) from None
    has_instances, has_inputs = "instances" in parsed, "inputs" in parsed
    if has_instances == has_inputs:
        raise CodecError(
            'body must have exactly one of "instances" (row format) or "inputs" (columnar format);'
            f" got {'both' if has_instances else 'neither'}"
        )
    if has_instances:
        if not isinstance(request.instances, list):
            raise CodecError('"instances" must be a list')
        values = [_named(instance, input_name, "instance") for instance in request.instances]
        return Predict(ROW, values, request.signature_name, request.output_filter or [])
    batch = _named(request.inputs, input_name, '"inputs"')
    if not isinstance(batch, list):
        raise CodecError(f'"inputs" must be a list (the batch) or {{"{input_name}": [...]}}')
    return Predict(COLUMNAR, batch, request.signature_name, request.output_filter or [])


def binary_value(value: Any) -> bytes | None:
    """The bytes of a `{"b64": "..."}` value; None for any other value."""
    if not (isinstance(value, dict) and set(value) == {"b64"}):
        return None
    if not isinstance(value["b64"], str):
        raise CodecError('"b64" must be a base64 string')
    try:
        # TF Serving accepts both alphabets; web-safe is common from browsers.
        return base64.b64decode(value["b64"].replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise CodecError('"b64" is not valid base64') from None


def encode_predict(form: str, outputs: dict[str, np.ndarray]) -> bytes:
    """The answer TF Serving gives, as JSON: one output's values unnamed; several by name, in
    each instance (row format) or for the batch (columnar)."""
    key = "predictions" if form == ROW else "outputs"
    if len(outputs) == 1:
        (values,) = outputs.values()
        answer: Any = values.tolist()
    elif form == ROW:
        columns = {name: values.tolist() for name, values in outputs.items()}
        count = len(next(iter(columns.values())))
        answer = [{name: column[i] for name, column in columns.items()} for i in range(count)]
    else:
        answer = {name: values.tolist() for name, values in outputs.items()}
    return json.dumps({key: answer}, separators=(",", ":")).encode()


def tensor_info(dtype: np.dtype, shape: list[int | None]) -> dict:
    """A TensorInfo of a SignatureDef, as TF Serving's metadata answer writes it."""
    return {
        "dtype": TF_DTYPES[np.dtype(dtype).name],
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape],
            "unknown_rank": False,
        },
    }


def _named(value: Any, input_name: str, what: str) -> Any:
    """`value`, or its input's value when it is an object naming inputs."""
    if not isinstance(value, dict) or set(value) == {"b64"}:
        return value
    if set(value) != {input_name}:
        names = ", ".join(sorted(map(repr, value))) or "none"
        raise CodecError(f"{what} names inputs {names}; the signature has one input, {input_name!r}")
    return value[input_name]
