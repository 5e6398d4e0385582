"""The gRPC codecs on their own: protobuf tensors to arrays and back, and every malformed
tensor refused as the client's mistake (CodecError, INVALID_ARGUMENT on the wire) before any
work, however large the shape it claims."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from service.faults import CodecError, TooManyRows
from service.protocols import v2_codec, v2_grpc
from service.protocols.tfserving_grpc import to_array, to_tensor_proto
from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.v2_grpc import decode_inputs, encode_outputs


def infer_request(
    *tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None
) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


def test_raw_and_typed_contents_decode_to_the_same_tensors():
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    raw = decode_inputs(infer_request(("features", "FP32", [2, 4]), raw=[rows.tobytes()]))
    typed_request = infer_request(("features", "FP32", [2, 4]))
    typed_request.inputs[0].contents.fp32_contents.extend(rows.ravel().tolist())
    np.testing.assert_array_equal(raw["features"], rows)
    np.testing.assert_array_equal(decode_inputs(typed_request)["features"], rows)
    files = infer_request(("image_bytes", "BYTES", [2]))
    files.inputs[0].contents.bytes_contents.extend([b"a", b"bc"])
    assert decode_inputs(files)["image_bytes"].tolist() == [b"a", b"bc"]
    prefixed = infer_request(("image_bytes", "BYTES", [2]), raw=[b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"])
    assert decode_inputs(prefixed)["image_bytes"].tolist() == [b"a", b"bc"]


def test_answers_are_raw_for_raw_requests_and_typed_otherwise():
    probabilities = np.array([[0.25, 0.75]], np.float32)
    outputs = [("probabilities", "FP32", probabilities), ("label", "BYTES", np.array([b"b"], object))]
    raw, typed = oip.ModelInferResponse(), oip.ModelInferResponse()
    encode_outputs(raw, outputs, raw=True)
    encode_outputs(typed, outputs, raw=False)
    assert raw.raw_output_contents == [probabilities.tobytes(), b"\x01\x00\x00\x00b"]
    assert list(typed.outputs[0].contents.fp32_contents) == [0.25, 0.75]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"b"]
    assert [list(o.shape) for o in typed.outputs] == [[1, 2], [1]]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (infer_request(("a", "FP32", [1]), ("b", "FP32", [1]), raw=[b"\0" * 4]), "one each"),
        (infer_request(("a", "FP32", [1]), ("a", "FP32", [1]), raw=[b"\0" * 4] * 2), "given twice"),
        (infer_request(("a", "FP32", [-1, 4]), raw=[b""]), "negative dimension"),
        (infer_request(("a", "FP16", [1])), "send it raw"),
        (infer_request(("a", "FP32", [10**12])), "holds 1000000000000 elements"),
        (infer_request(("a", "FP32", [2]), raw=[b"\0" * 4]), "takes 8 bytes"),
        (infer_request(("a", "BYTES", [1]), raw=[b"\x09\x00\x00\x00abc"]), "runs past the end"),
        (infer_request(("a", "NUMBERS", [1]), raw=[b"\0"]), "unknown datatype"),
    ],
    ids=[
        "raw-count",
        "twice",
        "negative",
        "fp16-typed",
        "huge-shape",
        "raw-size",
        "bytes-prefix",
        "datatype",
    ],
)
def test_malformed_infer_inputs_are_codec_errors(request_, message):
    with pytest.raises(CodecError, match=message):
        decode_inputs(request_)


def test_typed_values_must_fit_their_datatype():
    request = infer_request(("image", "UINT8", [1]))
    request.inputs[0].contents.uint_contents.append(300)
    with pytest.raises(CodecError, match=r"within \[0, 255\]"):
        decode_inputs(request)


def tensor(dtype: int, shape: list[int], **values) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **values
    )


def test_tensor_protos_decode_from_content_or_values_and_probabilities_encode_as_tf_does():
    rows = np.arange(6, dtype=np.uint8).reshape(2, 3)
    from_content = to_array(tensor(types_pb2.DT_UINT8, [2, 3], tensor_content=rows.tobytes()), "image")
    from_values = to_array(tensor(types_pb2.DT_UINT8, [2, 3], int_val=rows.ravel().tolist()), "image")
    np.testing.assert_array_equal(from_content, rows)
    np.testing.assert_array_equal(from_values, rows)
    files = to_array(tensor(types_pb2.DT_STRING, [2], string_val=[b"x", b"yz"]), "image")
    assert files.tolist() == [b"x", b"yz"]
    encoded = to_tensor_proto(np.array([[0.5, 0.5]], np.float32))
    assert encoded.dtype == types_pb2.DT_FLOAT and [d.size for d in encoded.tensor_shape.dim] == [1, 2]
    np.testing.assert_array_equal(np.frombuffer(encoded.tensor_content, "<f4"), [0.5, 0.5])


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (tensor(types_pb2.DT_COMPLEX64, [1]), "dtype DT_COMPLEX64 is not one of"),
        (
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
            "fully known",
        ),
        (tensor(types_pb2.DT_FLOAT, [-1, 4]), "fully known"),
        (tensor(types_pb2.DT_FLOAT, [2], tensor_content=b"\0" * 4), "takes 8 bytes"),
        (tensor(types_pb2.DT_FLOAT, [10**12], float_val=[1.0]), "holds 1000000000000 values; got 1"),
        (tensor(types_pb2.DT_UINT8, [1], int_val=[300]), r"within \[0, 255\]"),
    ],
    ids=["dtype", "unknown-rank", "unknown-dimension", "content-size", "huge-shape", "range"],
)
def test_malformed_tensor_protos_are_codec_errors(proto, message):
    with pytest.raises(CodecError, match=message):
        to_array(proto, "features")


# --- the declared shape is checked first, as every REST door checks it -------------------------


def test_sixty_five_dimensions_are_refused_as_over_rests_at_most_32_by_both_codecs():
    shape = [1] * 65
    with pytest.raises(CodecError, match=re.escape("input 'a': 65 dimensions; at most 32")):
        decode_inputs(infer_request(("a", "FP32", shape), raw=[b"\0" * 4]))
    with pytest.raises(CodecError, match=re.escape("input 'features': 65 dimensions; at most 32")):
        to_array(tensor(types_pb2.DT_FLOAT, shape, float_val=[1.0]), "features")


EMPTY_ELEMENTS = 2_600_000  # 10.4 MB of 4-byte lengths: the stall


def test_a_shape_over_the_rows_is_refused_before_any_bytes_element_is_read(monkeypatch):
    read = []
    monkeypatch.setattr(v2_grpc, "from_binary", lambda *args: read.append(args))
    request = infer_request(("image_bytes", "BYTES", [EMPTY_ELEMENTS]), raw=[b"\0\0\0\0" * EMPTY_ELEMENTS])
    with pytest.raises(TooManyRows):
        decode_inputs(request, max_rows=128, max_elements=128 * 3072)
    strings = tensor(types_pb2.DT_STRING, [EMPTY_ELEMENTS], string_val=[b""] * 4)
    with pytest.raises(TooManyRows):
        to_array(strings, "image", max_rows=128, max_elements=128 * 3072)
    assert read == []


def test_bytes_elements_past_the_declared_count_are_not_read(monkeypatch):
    counted = []
    real = v2_codec.LENGTH.unpack_from
    monkeypatch.setattr(
        v2_codec, "LENGTH", SimpleNamespace(size=4, unpack_from=lambda *a: counted.append(1) or real(*a))
    )
    request = infer_request(("image_bytes", "BYTES", [1]), raw=[b"\0\0\0\0" * EMPTY_ELEMENTS])
    with pytest.raises(CodecError, match="shape \\[1\\] holds 1 elements; the data has more than 1"):
        decode_inputs(request, max_rows=128, max_elements=128)
    assert len(counted) == 2, "read one past the declared count, and no further"


def test_typed_values_are_counted_before_any_is_converted(monkeypatch):
    monkeypatch.setattr(v2_grpc, "from_json", lambda *args: pytest.fail("converted"))
    request = infer_request(("features", "FP32", [1, 4]))
    request.inputs[0].contents.fp32_contents.extend([0.0] * 100_000)
    with pytest.raises(CodecError, match="holds 4 elements; the data has 100000"):
        decode_inputs(request, max_rows=128, max_elements=512)
