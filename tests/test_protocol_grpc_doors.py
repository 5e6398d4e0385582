"""gRPC is one more front door: each fault of tests/test_front_doors.py, sent through the
Open Inference Protocol's ModelInfer (raw and typed tensors) and TF Serving's Predict, gets the
message REST gives it and the status code the one table (`service.errors.GRPC_CODES`) maps its HTTP
status to: the codes a gRPC client branches on, written out here as the specification."""

from __future__ import annotations

import base64
from functools import partial

import grpc
import numpy as np
import pytest
from deployments import samples, serving, serving_both_doors, value
from google.protobuf import json_format
from payloads import GOOD_IMAGE
from served import free_port
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from test_front_doors import (
    FEATURE_FAULTS,
    FLOWER,
    IMAGE_FAULTS,
    answer,
    feature_rows,
    image_files,
    v2_binary,
    v2_json,
)

from service import errors
from service.errors import GRPC_CODES, STATUS
from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.third_party import tensorflow_serving_pb2 as tfs
from service.protocols.v2_codec import serialize_bytes

GRPC_DOORS = ("grpc v2 raw", "grpc v2 typed", "grpc tfserving")
INFER = "/inference.GRPCInferenceService/ModelInfer"
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
    with serving_both_doors(shared_models) as (client, channel):
        yield client, channel


def rpc(channel, path: str, request, response_type, metadata=()):
    return channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )(request, metadata=metadata, timeout=30)


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
    return rpc(channel, INFER, request, oip.ModelInferResponse)


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


def test_every_status_a_fault_means_has_its_grpc_code_in_the_one_table():
    assert set(STATUS.values()) | {500} <= set(GRPC_CODES)
    assert {status: GRPC_CODES[status] for status in CODES} == CODES


def test_sixty_five_dimensions_get_rests_message_and_invalid_argument(doors):
    """numpy's own limit is 64 dimensions; past it a bare ValueError was an internal error."""
    client, channel = doors
    shape = [1] * 65
    tensor = {"name": "features", "datatype": "FP32", "shape": shape, "data": [1.0]}
    rest = answer("v2 json", client.post("/v2/models/iris/infer", json={"inputs": [tensor]}))
    assert rest == (400, "input 'features': 65 dimensions; at most 32")
    raw, typed = (infer_claim("iris", "features", "FP32", shape) for _ in range(2))
    raw.raw_input_contents.append(np.float32(1).tobytes())
    typed.inputs[0].contents.fp32_contents.append(1.0)
    dims = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)] * 65)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=dims, float_val=[1.0])
    assert_as_rest_answers(
        rest,
        {
            "grpc v2 raw": grpc_answer(lambda: rpc(channel, INFER, raw, oip.ModelInferResponse)),
            "grpc v2 typed": grpc_answer(lambda: rpc(channel, INFER, typed, oip.ModelInferResponse)),
            "grpc tfserving": grpc_answer(lambda: predict(channel, "iris", "features", proto)),
        },
    )


def test_a_shape_claiming_millions_of_rows_gets_rests_413_before_its_data_is_read(doors):
    """The issue's 2.6 M empty BYTES elements (10.4 MB): refused from the declared shape, as
    REST does, before a single element is read."""
    client, channel = doors
    count = 2_600_000
    blob = b"\0\0\0\0" * count
    rest = answer("v2 binary", v2_binary(client, "image_bytes", "BYTES", [count], blob, "cifar10"))
    assert rest == (413, "more than 16 instances in one request (MAX_BATCH_SIZE)")
    raw, typed = (infer_claim("cifar10", "image_bytes", "BYTES", [count]) for _ in range(2))
    raw.raw_input_contents.append(blob)
    typed.inputs[0].contents.bytes_contents.extend([b""] * 4)
    dims = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=count)])
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=dims, string_val=[b""] * 4)
    assert_as_rest_answers(
        rest,
        {
            "grpc v2 raw": grpc_answer(lambda: rpc(channel, INFER, raw, oip.ModelInferResponse)),
            "grpc v2 typed": grpc_answer(lambda: rpc(channel, INFER, typed, oip.ModelInferResponse)),
            "grpc tfserving": grpc_answer(lambda: predict(channel, "cifar10", "image", strings)),
        },
    )


def infer_claim(model: str, name: str, datatype: str, shape: list[int]) -> oip.ModelInferRequest:
    """A ModelInfer request declaring `shape`, its data left to the caller."""
    request = oip.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


KEY = "door-key"


@pytest.fixture(scope="module")
def keyed_doors(shared_models):
    port = free_port()
    with (
        serving(shared_models, grpc_port=port, api_key=KEY) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield client, channel


def test_a_wrong_key_is_answered_alike_by_all_six_doors(keyed_doors):
    client, channel = keyed_doors
    wrong = {"X-API-Key": "wrong"}
    flower = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FLOWER}
    rest = {
        "native features": answer(
            "native", client.post("/predict/iris", json={"features": FLOWER}, headers=wrong)
        ),
        "native image": answer(
            "native", client.post("/predict/image", files={"file": GOOD_IMAGE}, headers=wrong)
        ),
        "v2": answer("v2", client.post("/v2/models/iris/infer", json={"inputs": [flower]}, headers=wrong)),
        "tfserving": answer(
            "tfserving", client.post("/v1/models/iris:predict", json={"instances": [FLOWER]}, headers=wrong)
        ),
    }
    assert set(rest.values()) == {(401, "missing or wrong API key")}
    metadata = (("x-api-key", "wrong"),)
    infer = infer_claim("iris", "features", "FP32", [1, 4])
    infer.raw_input_contents.append(np.array([FLOWER], np.float32).tobytes())
    tf_request = tfs.PredictRequest(model_spec=tfs.ModelSpec(name="iris"))
    predict_path = "/tensorflow.serving.PredictionService/Predict"
    grpc_doors = {
        "grpc v2": grpc_answer(lambda: rpc(channel, INFER, infer, oip.ModelInferResponse, metadata)),
        "grpc tfserving": grpc_answer(
            lambda: rpc(channel, predict_path, tf_request, tfs.PredictResponse, metadata)
        ),
    }
    assert set(grpc_doors.values()) == {(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")}


def test_a_bug_is_an_internal_error_counted_once_by_every_door(shared_models, monkeypatch, caplog):
    """Not the client's doing: 500 (INTERNAL) with nothing of what failed, logged, counted."""
    rows = np.array([FLOWER], np.float32)
    with serving_both_doors(shared_models) as (client, channel):
        predictor = client.app.state.registry.models["iris"].predictor
        monkeypatch.setattr(predictor, "predict", lambda batch: 1 / 0)
        http = {door: answer(door, feature_rows(client, door, rows)) for door in ("v2 json", "tfserving")}
        grpc_doors = feature_answers(channel, rows)
        counted = value(samples(client), "service_errors_total", kind="unhandled")
    assert set(http.values()) == {(500, "internal error")}
    assert grpc_doors == dict.fromkeys(GRPC_DOORS, (grpc.StatusCode.INTERNAL, "internal error"))
    assert counted == len(http) + len(grpc_doors)
    failures = [r for r in caplog.records if r.name == errors.__name__]  # the batcher logs its own
    assert len(failures) == len(http) + len(grpc_doors)
    assert all(r.levelname == "ERROR" and isinstance(r.exc_info[1], ZeroDivisionError) for r in failures)


def test_encoded_images_of_any_shape_but_a_column_are_refused_alike_by_every_door(doors):
    client, channel = doors
    refused = "of encoded images must have shape [n] (or [n, 1]); got [1, 2]"
    encoded = base64.b64encode(GOOD_IMAGE).decode()
    data, parameters = [encoded, encoded], {"content_type": "base64"}
    rest = v2_json(client, "image_bytes", "BYTES", [1, 2], data, "cifar10", parameters=parameters)
    assert answer("v2", rest) == (422, f"input 'image_bytes' {refused}")
    for shape, ok in (([1, 2], False), ([1, 1], True)):  # [n, 1]: a column of files, as some send
        files = [GOOD_IMAGE] * shape[1]
        raw = infer_claim("cifar10", "image_bytes", "BYTES", shape)
        raw.raw_input_contents.append(serialize_bytes(files))
        typed = infer_claim("cifar10", "image_bytes", "BYTES", shape)
        typed.inputs[0].contents.bytes_contents.extend(files)
        strings = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
            ),
            string_val=files,
        )
        calls = {
            "grpc v2 raw": partial(rpc, channel, INFER, raw, oip.ModelInferResponse),
            "grpc v2 typed": partial(rpc, channel, INFER, typed, oip.ModelInferResponse),
            "grpc tfserving": partial(predict, channel, "cifar10", "image", strings),
        }
        if ok:
            assert all(call().outputs for call in calls.values())
            continue
        assert {door: grpc_answer(call) for door, call in calls.items()} == {
            "grpc v2 raw": (grpc.StatusCode.INVALID_ARGUMENT, f"input 'image_bytes' {refused}"),
            "grpc v2 typed": (grpc.StatusCode.INVALID_ARGUMENT, f"input 'image_bytes' {refused}"),
            "grpc tfserving": (grpc.StatusCode.INVALID_ARGUMENT, f"input 'image' {refused}"),
        }


def test_a_signature_the_export_lacks_is_refused_alike_by_both_tf_serving_doors(doors):
    client, channel = doors
    message = "no signature 'other'; the export serves 'serving_default'"
    rest = client.post("/v1/models/iris:predict", json={"signature_name": "other", "instances": [FLOWER]})
    assert answer("tfserving", rest) == (422, message)
    features = np.array([FLOWER], np.float32)
    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape_of(features), tensor_content=features.tobytes()
    )

    def asking_for(signature: str) -> tfs.PredictRequest:
        spec = tfs.ModelSpec(name="iris", signature_name=signature)
        return tfs.PredictRequest(model_spec=spec, inputs={"features": proto})

    path = "/tensorflow.serving.PredictionService/Predict"
    call = lambda: rpc(channel, path, asking_for("other"), tfs.PredictResponse)  # noqa: E731
    assert grpc_answer(call) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    for default in ("", "serving_default"):  # none named is TF Serving's default, the export's one
        assert rpc(channel, path, asking_for(default), tfs.PredictResponse).outputs
        ok = client.post("/v1/models/iris:predict", json={"signature_name": default, "instances": [FLOWER]})
        assert ok.status_code == 200, ok.text


def test_a_version_is_read_alike_by_every_door(doors):
    client, channel = doors
    metadata = "/tensorflow.serving.PredictionService/GetModelMetadata"

    def tf_asking(**version) -> tfs.GetModelMetadataRequest:
        spec = tfs.ModelSpec(name="iris", **version)
        return tfs.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])

    not_live = (404, "model 'iris' has no live version 9; version 1 is live")
    not_a_number = (404, "model 'iris' has no version 'abc'; versions are whole numbers")
    assert answer("tfserving", client.get("/v1/models/iris/versions/9/metadata")) == not_live
    assert answer("v2", client.get("/v2/models/iris/versions/abc")) == not_a_number
    v2_metadata = "/inference.GRPCInferenceService/ModelMetadata"
    tf_answer, v2_answer = tfs.GetModelMetadataResponse, oip.ModelMetadataResponse
    asked = {
        "tf number": (metadata, tf_asking(version={"value": 9}), tf_answer),
        "tf label": (metadata, tf_asking(version_label="stable"), tf_answer),
        "v2 text": (v2_metadata, oip.ModelMetadataRequest(name="iris", version="abc"), v2_answer),
    }
    answers = {door: grpc_answer(partial(rpc, channel, *call)) for door, call in asked.items()}
    assert answers == {
        "tf number": (grpc.StatusCode.NOT_FOUND, not_live[1]),
        "tf label": (grpc.StatusCode.NOT_FOUND, "model 'iris' has no version label 'stable'; ask by number"),
        "v2 text": (grpc.StatusCode.NOT_FOUND, not_a_number[1]),
    }
    for live in (tf_asking(version={"value": 1}), tf_asking()):
        assert rpc(channel, metadata, live, tfs.GetModelMetadataResponse).model_spec.version.value == 1


@pytest.mark.parametrize("model", ["iris", "cifar10"])
def test_tf_serving_metadata_over_grpc_is_the_message_rest_writes_as_json(doors, model):
    client, channel = doors
    request = tfs.GetModelMetadataRequest(
        model_spec=tfs.ModelSpec(name=model), metadata_field=["signature_def"]
    )
    path = "/tensorflow.serving.PredictionService/GetModelMetadata"
    response = rpc(channel, path, request, tfs.GetModelMetadataResponse)
    signatures = tfs.SignatureDefMap()
    signatures.ParseFromString(response.metadata["signature_def"].value)
    as_json = json_format.MessageToDict(
        signatures, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for signature in as_json["signature_def"].values():
        assert signature.pop("defaults") == {}  # a newer SignatureDef field, which REST leaves out
    rest = client.get(f"/v1/models/{model}/metadata").json()["metadata"]["signature_def"]
    assert as_json == rest
