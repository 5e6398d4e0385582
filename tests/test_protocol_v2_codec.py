"""The v2 codec alone: bodies in, tensors out, and back; JSON and the binary extension."""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.faults import BodyTooLarge, CodecError, TooManyRows, UnfitInput
from service.protocols.v2_codec import (
    DTYPES,
    Output,
    datatype_of,
    decode_content,
    deserialize_bytes,
    encode_response,
    from_json,
    parse_request,
    serialize_bytes,
)


def binary_body(inputs: list[dict], blobs: list[bytes], **extra) -> tuple[bytes, int]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + b"".join(blobs), len(header)


def test_bytes_elements_are_length_prefixed_little_endian():
    assert serialize_bytes([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    assert deserialize_bytes(b"\x02\x00\x00\x00ab\x00\x00\x00\x00") == [b"ab", b""]


def test_bytes_serialization_agrees_with_tritonclient_both_ways():
    elements = [b"\xff\xd8 jpeg", b"", b"label", bytes(range(256))]
    ours = serialize_bytes(elements)
    theirs = serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert ours == theirs
    assert list(deserialize_bytes_tensor(ours)) == elements


@pytest.mark.parametrize("broken", [b"\x05\x00", b"\x05\x00\x00\x00abc"])
def test_truncated_bytes_data_is_refused(broken):
    with pytest.raises(CodecError):
        deserialize_bytes(broken)


def test_binary_inputs_are_cut_from_the_body_in_input_order():
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(1, 2, 2, 3)
    files = serialize_bytes([b"first file", b"second"])
    body, length = binary_body(
        [
            {
                "name": "image",
                "shape": [1, 2, 2, 3],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": 12},
            },
            {
                "name": "image_bytes",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(files)},
            },
        ],
        [pixels.tobytes(), files],
    )
    request, tensors = parse_request(body, length)
    assert [i.name for i in request.inputs] == ["image", "image_bytes"]
    np.testing.assert_array_equal(tensors["image"], pixels)
    assert tensors["image"].dtype == np.uint8
    assert tensors["image_bytes"].tolist() == [b"first file", b"second"]


def test_json_data_may_be_nested_or_flat():
    nested = {"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]}
    flat = {**nested, "data": [1, 2.5, 3, 4]}
    for given in (nested, flat):
        _, tensors = parse_request(json.dumps({"inputs": [given]}).encode(), None)
        np.testing.assert_array_equal(tensors["features"], np.array([[1, 2.5], [3, 4]], np.float32))
        assert tensors["features"].dtype == np.float32


def test_bytes_in_json_are_text_or_base64_when_declared():
    text = {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["héllo"]}
    b64 = {
        "name": "b",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(b"\x00\xff").decode()],
    }
    _, tensors = parse_request(json.dumps({"inputs": [text, b64]}).encode(), None)
    assert tensors["s"].tolist() == ["héllo".encode()]
    assert tensors["b"].tolist() == [b"\x00\xff"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "holds 4 elements"),
        ({"shape": [3], "datatype": "UINT8", "data": [1, 2, 256]}, "within [0, 255]"),
        ({"shape": [2], "datatype": "UINT8", "data": [1.5, 2]}, "must be integers"),
        ({"shape": [2], "datatype": "INT8", "data": [-129, 0]}, "within [-128, 127]"),
        ({"shape": [1], "datatype": "FP32", "data": ["1"]}, "must be numbers"),
        ({"shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}, "even shape"),
        ({"shape": [1], "datatype": "FLOAT", "data": [1]}, "unknown datatype"),
        ({"shape": [1], "datatype": "BYTES", "data": [3]}, "strings"),
        (
            {"shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"}, "data": ["%%"]},
            "base64",
        ),
        ({"shape": [1], "datatype": "FP32"}, "neither data nor binary_data_size"),
        ({"shape": [-1], "datatype": "FP32", "data": [1]}, "greater than or equal to 0"),
    ],
)
def test_json_tensors_that_do_not_match_their_declaration_are_refused(tensor, message):
    with pytest.raises(CodecError, match=re.escape(message)):
        parse_request(json.dumps({"inputs": [{"name": "x", **tensor}]}).encode(), None)


def test_a_number_too_large_for_its_datatype_decodes_as_infinity_for_the_data_plane_to_refuse():
    # Whether a value is acceptable is the model's question (service.dataplane), not the wire's.
    huge = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1e39]}
    _, tensors = parse_request(json.dumps({"inputs": [huge]}).encode(), None)
    assert np.isinf(tensors["x"]).all()


@pytest.mark.parametrize(
    ("inputs", "blobs", "message"),
    [
        (
            [{"shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}],
            [b"\0" * 12],
            "takes 16",
        ),
        (
            [{"shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}],
            [serialize_bytes([b"abcde"])],
            "holds 2",
        ),
        (
            [{"shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}],
            [b"\0"],
            "only 1 bytes remain",
        ),
        (
            [{"shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 1}}],
            [b"\0" * 6],
            "5 bytes of binary data belong to no input",
        ),
        (
            [{"shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": -1}}],
            [b"\0"],
            "binary_data_size must be a non-negative integer",
        ),
        (
            [{"shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": "1"}}],
            [b"\0"],
            "non-negative integer",
        ),
        ([{"shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}], [b"\x02"], "0 or 1"),
    ],
)
def test_binary_tensors_that_do_not_match_their_declaration_are_refused(inputs, blobs, message):
    body, length = binary_body([{"name": "x", **tensor} for tensor in inputs], blobs)
    with pytest.raises(CodecError, match=re.escape(message)):
        parse_request(body, length)


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{", None, "body"),
        (b'{"inputs": []}', None, "at least 1"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', 500, "exceeds"),
        (b"[1, 2]", None, "should be an object"),
    ],
)
def test_malformed_bodies_are_refused(body, length, message):
    with pytest.raises(CodecError, match=re.escape(message)):
        parse_request(body, length)


def test_a_header_length_of_the_whole_body_means_no_binary_part():
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    assert parse_request(body, len(body))[1]["x"].tolist() == [1.0]


def test_an_empty_tensor_may_be_sent_as_zero_bytes_of_binary_data():
    body, length = binary_body(
        [{"name": "x", "shape": [0, 4], "datatype": "FP32", "parameters": {"binary_data_size": 0}}], []
    )
    assert parse_request(body, length)[1]["x"].shape == (0, 4)


def declaring(shape: list[int]) -> bytes:
    tensor = {"name": "x", "shape": shape, "datatype": "UINT8", "data": [0] * math.prod(shape)}
    return json.dumps({"inputs": [tensor]}).encode()


def test_at_most_32_dimensions_are_read():
    assert parse_request(declaring([1] * 32), None)[1]["x"].ndim == 32
    with pytest.raises(CodecError, match=re.escape("input 'x': 33 dimensions; at most 32")):
        parse_request(declaring([1] * 33), None)


def test_rows_and_values_are_refused_from_the_declared_shape_past_their_limits_only():
    assert parse_request(declaring([4, 1]), None, max_rows=4, max_elements=4)[1]["x"].shape == (4, 1)
    with pytest.raises(TooManyRows):
        parse_request(declaring([5, 1]), None, max_rows=4)
    with pytest.raises(UnfitInput, match=re.escape("declares 5 values; at most 4 fit")):
        parse_request(declaring([1, 5]), None, max_rows=4, max_elements=4)


def test_bytes_in_json_are_taken_as_text_unless_declared_base64():
    assert from_json(["aGk="], "BYTES", [1]).tolist() == [b"aGk="]
    assert from_json(["aGk="], "BYTES", [1], base64_strings=True).tolist() == [b"hi"]


def test_bool_tensors_are_bytes_of_0_or_1():
    body, length = binary_body(
        [{"name": "x", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}], [b"\1\0\1"]
    )
    assert parse_request(body, length)[1]["x"].tolist() == [True, False, True]


@pytest.mark.parametrize("datatype", ["UINT8", "INT32", "FP32", "BOOL"])
def test_an_empty_tensor_may_be_sent_as_json_of_any_datatype(datatype):
    body = json.dumps({"inputs": [{"name": "x", "shape": [0, 4], "datatype": datatype, "data": []}]})
    tensor = parse_request(body.encode(), None)[1]["x"]
    assert tensor.shape == (0, 4) and tensor.dtype == DTYPES[datatype]


def test_an_input_given_twice_is_refused():
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(CodecError, match="twice"):
        parse_request(json.dumps({"inputs": [tensor, tensor]}).encode(), None)


def test_responses_put_binary_outputs_after_the_json_header():
    probabilities = np.array([[0.25, 0.75]], np.float32)
    labels = np.array([b"dog"], object)
    body, length = encode_response(
        "m",
        "3",
        "42",
        [Output("probabilities", "FP32", probabilities, binary=True), Output("label", "BYTES", labels)],
    )
    header = json.loads(body[:length])
    assert header["id"] == "42" and header["model_version"] == "3"
    first, second = header["outputs"]
    assert first == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert second == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["dog"]}
    assert np.frombuffer(body[length:], "<f4").tolist() == [0.25, 0.75]


def test_a_response_never_holds_nan_which_json_cannot():
    with pytest.raises(ValueError):
        encode_response("m", "1", None, [Output("p", "FP32", np.array([np.nan], np.float32))])


def test_json_only_responses_have_no_binary_part():
    body, length = encode_response("m", "1", None, [Output("label", "BYTES", np.array([b"a", b"b"], object))])
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}],
    }


def test_binary_bytes_outputs_are_length_prefixed():
    body, length = encode_response(
        "m", "1", None, [Output("label", "BYTES", np.array([b"cat"], object), True)]
    )
    assert body[length:] == struct.pack("<I", 3) + b"cat"


def test_numpy_dtypes_have_their_protocol_names():
    assert datatype_of(np.dtype(np.uint8)) == "UINT8"
    assert datatype_of(np.dtype(np.float32)) == "FP32"
    with pytest.raises(ValueError):
        datatype_of(np.dtype("U3"))


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_bodies_are_inflated_as_tritonclient_compresses_them(encoding, compress):
    assert decode_content(compress(b'{"inputs": []}'), encoding, 100) == b'{"inputs": []}'
    assert decode_content(b"plain", None, 100) == b"plain"
    # Repeats 20,000 bytes back: the compressor's whole 32 KiB window is needed to inflate it.
    repeated = np.random.default_rng(0).bytes(20_000) * 2
    assert decode_content(compress(repeated), encoding, 50_000) == repeated


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_may_not_inflate_past_the_limit(encoding):
    """A 64 MiB bomb (a few dozen kB compressed) is refused with at most the limit inflated:
    the peak of memory allocated while refusing it stays far below what inflating it takes."""
    inflated = 64 * 2**20
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    bomb = compress(bytes(inflated))
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge, match="request body over 1000 bytes once inflated"):
            decode_content(bomb, encoding, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20 < inflated  # without the bound: over 64 MiB
    assert decode_content(compress(bytes(1000)), encoding, 1000) == bytes(1000)  # the limit itself passes


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"not gzip", "gzip", "not valid gzip"),
        (zlib.compress(b"x" * 100), "gzip", "not valid gzip"),  # deflate's zlib stream, called gzip
        # mtime=0: gzip's header holds no clock, so every xdist worker collects the same test id
        (gzip.compress(b"x" * 100, mtime=0)[:-12], "gzip", "truncated"),
        (b"x", "br", "unsupported Content-Encoding"),
    ],
)
def test_bad_compressed_bodies_are_refused(body, encoding, message):
    with pytest.raises(CodecError, match=message):
        decode_content(body, encoding, 1000)
