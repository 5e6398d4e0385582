"""Open Inference Protocol v2 tensors: JSON `data` and the binary tensor data extension, to
numpy arrays and back. Pure functions, bytes in and arrays out; nothing here knows a model.

Binary tensor data extension (Triton's, which `tritonclient` uses by default): the body is the
JSON header (`Inference-Header-Content-Length` bytes long) followed by the raw tensors of the
inputs whose `parameters.binary_data_size` says how many bytes each takes, in input order;
numbers little-endian, row-major; each BYTES element as a 4-byte little-endian length and then
its bytes. Responses do the same for outputs asked for with `binary_data`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.faults import BodyTooLarge, CodecError, validation_message
from service.protocols.tensors import check_declared, numeric_array
from service.protocols.v2_types import InferenceRequest, RequestInput

# The protocol's fixed-size datatypes; BYTES (variable length) is handled on its own.
DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Output:
    """One output tensor to answer: BYTES outputs hold an object array of `bytes`."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for a numpy dtype."""
    for name, known in DTYPES.items():
        if np.dtype(dtype).newbyteorder("<") == known:
            return name
    raise ValueError(f"no v2 datatype for {dtype}")


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body as it was before its Content-Encoding: gzip or deflate (zlib), the two that
    tritonclient compresses requests with; inflated to at most `max_bytes`, so a small body
    cannot expand without bound."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise CodecError(f"unsupported Content-Encoding {encoding!r}: gzip, deflate or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise CodecError(f"body is not valid {encoding}: {error}") from None
    if len(data) > max_bytes:
        raise BodyTooLarge(f"request body over {max_bytes} bytes once inflated")
    if not inflater.eof:
        raise CodecError(f"{encoding} body is truncated")
    return data


def parse_request(
    body: bytes, header_length: int | None, max_rows: int | None = None, max_elements: int | None = None
) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """The request in `body` and its input tensors by name, shaped as declared; an input
    declaring more than `max_rows` rows or `max_elements` elements is refused before its data
    is converted."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    elif header_length > len(body):
        raise CodecError(f"Inference-Header-Content-Length {header_length} exceeds the {len(body)}-byte body")
    else:
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as error:
        raise CodecError(validation_message(error.errors(include_input=False))) from None
    return request, decode_inputs(request.inputs, binary, max_rows, max_elements)


def decode_inputs(
    inputs: list[RequestInput],
    binary: memoryview | bytes,
    max_rows: int | None = None,
    max_elements: int | None = None,
) -> dict[str, np.ndarray]:
    """Each input's tensor, from its JSON `data` or its slice of the binary part."""
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        if tensor.name in tensors:
            raise CodecError(f"input {tensor.name!r} given twice")
        check_declared(f"input {tensor.name!r}", tensor.shape, max_rows, max_elements)
        parameters = tensor.parameters or {}
        size = parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise CodecError(f"input {tensor.name!r}: binary_data_size must be a non-negative integer")
            if tensor.data is not None:
                raise CodecError(f"input {tensor.name!r} has both data and binary_data_size")
            chunk = binary[offset : offset + size]
            if len(chunk) < size:
                raise CodecError(
                    f"input {tensor.name!r}: binary_data_size {size} but only {len(chunk)} bytes remain"
                )
            offset += size
            tensors[tensor.name] = from_binary(bytes(chunk), tensor.datatype, tensor.shape, tensor.name)
        elif tensor.data is None:
            raise CodecError(f"input {tensor.name!r} has neither data nor binary_data_size")
        else:
            base64_strings = parameters.get("content_type") == "base64"
            tensors[tensor.name] = from_json(
                tensor.data, tensor.datatype, tensor.shape, tensor.name, base64_strings
            )
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return tensors


def from_binary(chunk: bytes, datatype: str, shape: list[int], name: str = "tensor") -> np.ndarray:
    """A tensor from its raw bytes: little-endian numbers, or length-prefixed BYTES elements."""
    count = math.prod(shape)
    if datatype == BYTES:
        elements = deserialize_bytes(chunk, count)
        if len(elements) != count:
            has = f"more than {count}" if len(elements) > count else len(elements)
            raise CodecError(f"input {name!r}: shape {shape} holds {count} elements; the data has {has}")
        return _object_array(elements, shape)
    dtype = _dtype(datatype, name)
    if len(chunk) != count * dtype.itemsize:
        raise CodecError(
            f"input {name!r}: shape {shape} of {datatype} takes {count * dtype.itemsize} bytes;"
            f" got {len(chunk)}"
        )
    if dtype == np.bool_ and not set(chunk) <= {0, 1}:
        raise CodecError(f"input {name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(chunk, dtype).reshape(shape)


def from_json(data, datatype: str, shape: list[int], name: str = "tensor", base64_strings: bool = False):
    """A tensor from JSON `data`, nested or flat; numbers must fit the datatype exactly."""
    count = math.prod(shape)
    if datatype == BYTES:
        elements = list(_flatten(data))
        if not all(isinstance(element, str) for element in elements):
            raise CodecError(f"input {name!r}: BYTES data must be strings")
        if len(elements) != count:
            raise CodecError(
                f"input {name!r}: shape {shape} holds {count} elements; the data has {len(elements)}"
            )
        if base64_strings:
            try:
                return _object_array([base64.b64decode(e, validate=True) for e in elements], shape)
            except (binascii.Error, ValueError):
                raise CodecError(f"input {name!r}: data is not valid base64") from None
        return _object_array([element.encode() for element in elements], shape)
    dtype = _dtype(datatype, name)
    values = numeric_array(data, dtype, f"input {name!r}")
    if values.size != count:
        raise CodecError(f"input {name!r}: shape {shape} holds {count} elements; the data has {values.size}")
    return values.reshape(shape)


def encode_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[Output]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    described, blobs = [], []
    for output in outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.binary:
            blob = to_binary(output.array, output.datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = to_json(output.array, output.datatype)
        described.append(tensor)
    response = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:  # JSON alone, answered as every JSON answer is (service/responses.py)
        return header, None
    return b"".join([header, *blobs]), len(header)


def to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == BYTES:
        return serialize_bytes(array.ravel().tolist())
    return np.ascontiguousarray(array, DTYPES[datatype]).tobytes()


def to_json(array: np.ndarray, datatype: str) -> list:
    """Flat, row-major; BYTES elements as text (this service's are labels)."""
    if datatype == BYTES:
        return [element.decode() for element in array.ravel().tolist()]
    return array.ravel().tolist()


def serialize_bytes(elements: list[bytes]) -> bytes:
    """BYTES elements, each as a 4-byte little-endian length and then its bytes."""
    return b"".join(LENGTH.pack(len(element)) + element for element in elements)


def deserialize_bytes(buffer: bytes, at_most: int | None = None) -> list[bytes]:
    """The elements of `buffer`; with `at_most`, no more than one past it are read (enough to
    say there are too many), so the work is bounded by what the shape declares, not by how many
    4-byte lengths the client packed in (a 10 MB buffer holds 2.6 M empty elements)."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(buffer) and (at_most is None or len(elements) <= at_most):
        if offset + LENGTH.size > len(buffer):
            raise CodecError("BYTES data ends inside an element's 4-byte length")
        (length,) = LENGTH.unpack_from(buffer, offset)
        offset += LENGTH.size
        if offset + length > len(buffer):
            raise CodecError(f"BYTES element of {length} bytes runs past the end of its data")
        elements.append(buffer[offset : offset + length])
        offset += length
    return elements


def _dtype(datatype: str, name: str) -> np.dtype:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise CodecError(f"input {name!r}: unknown datatype {datatype!r}") from None


def _flatten(data):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _object_array(elements: list[bytes], shape: list[int]) -> np.ndarray:
    array = np.empty(len(elements), object)
    array[:] = elements
    return array.reshape(shape)
