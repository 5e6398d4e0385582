"""gRPC is one more front door: each fault of tests/test_front_doors.py, sent through the
Open Inference Protocol's ModelInfer (raw and typed tensors) and TF Serving's Predict, gets the
message REST gives it and the status code the one table (`service.errors.GRPC_CODES`) maps its HTTP
status to: the codes a gRPC client branches on, written out here as the specification."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from deployments import serving
from payloads import GOOD_IMAGE
from served import free_port
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from test_front_doors import FEATURE_FAULTS, FLOWER, IMAGE_FAULTS, answer, feature_rows, image_files

from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.third_party import tensorflow_serving_pb2 as tfs
from service.protocols.v2_codec import serialize_bytes

GRPC_DOORS = ("grpc v2 raw", "grpc v2 typed", "grpc tfserving")
CODES = {  # HTTP status -> gRPC code
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
}


@pytest.fixture(scope="module")
def doors(shared_models):
    """The in-process app (at most 16 rows per request) with its gRPC server: (client, channel)."""
    port = free_port()
    with (
        serving(shared_models, grpc_port=port) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield client, channel


def rpc(channel, path: str, request, response_type):
    return channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )(request, timeout=30)


def model_infer(channel, model: str, name: str, datatype: str, array: np.ndarray, raw: bool):
    request = oip.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if raw:
        blob = serialize_bytes(array.tolist()) if datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(blob)
    elif datatype == "BYTES":
        tensor.contents.bytes_contents.extend(array.tolist())
    else:
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return rpc(channel, "/inference.GRPCInferenceService/ModelInfer", request, oip.ModelInferResponse)


def predict(channel, model: str, name: str, proto: tensor_pb2.TensorProto):
    request = tfs.PredictRequest(model_spec=tfs.ModelSpec(name=model), inputs={name: proto})
    return rpc(channel, "/tensorflow.serving.PredictionService/Predict", request, tfs.PredictResponse)


def shape_of(array: np.ndarray) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
    )


def grpc_answer(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def image_answers(channel, files: list[bytes], model: str = "cifar10") -> dict:
    array = np.empty(len(files), object)
    array[:] = files
    strings = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=shape_of(array), string_val=files
    )
    return {
        "grpc v2 raw": grpc_answer(lambda: model_infer(channel, model, "image_bytes", "BYTES", array, True)),
        "grpc v2 typed": grpc_answer(
            lambda: model_infer(channel, model, "image_bytes", "BYTES", array, False)
        ),
        "grpc tfserving": grpc_answer(lambda: predict(channel, model, "image", strings)),
    }


def feature_answers(channel, rows: np.ndarray, model: str = "iris") -> dict:
    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape_of(rows), tensor_content=rows.tobytes()
    )
    return {
        "grpc v2 raw": grpc_answer(lambda: model_infer(channel, model, "features", "FP32", rows, True)),
        "grpc v2 typed": grpc_answer(lambda: model_infer(channel, model, "features", "FP32", rows, False)),
        "grpc tfserving": grpc_answer(lambda: predict(channel, model, "features", proto)),
    }


def assert_as_rest_answers(rest: tuple[int, str], answers: dict) -> None:
    status, message = rest
    assert answers == dict.fromkeys(GRPC_DOORS, (CODES[status], message))


@pytest.mark.parametrize(("files", "status", "message"), IMAGE_FAULTS)
def test_an_image_fault_gets_rests_message_and_its_statuss_code(doors, files, status, message):
    client, channel = doors
    rest = answer("v2 binary", image_files(client, "v2 binary", files))
    assert rest[0] == status and message in rest[1]
    assert_as_rest_answers(rest, image_answers(channel, files))


@pytest.mark.parametrize(("rows", "status", "message"), FEATURE_FAULTS)
def test_a_features_fault_gets_rests_message_and_its_statuss_code(doors, rows, status, message):
    client, channel = doors
    rest = answer("v2 binary", feature_rows(client, "v2 binary", rows))
    assert rest[0] == status and message in rest[1]
    assert_as_rest_answers(rest, feature_answers(channel, rows))


def test_an_unknown_model_gets_rests_message_and_not_found(doors):
    client, channel = doors
    rows = np.array([FLOWER], np.float32)
    rest = answer("v2 binary", feature_rows(client, "v2 binary", rows, "tulip"))
    assert rest == (404, "no model named 'tulip'")
    assert_as_rest_answers(rest, feature_answers(channel, rows, "tulip"))
    assert_as_rest_answers(rest, image_answers(channel, [GOOD_IMAGE], "tulip"))
