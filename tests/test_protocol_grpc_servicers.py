"""The gRPC servicers in-process, beside their REST twins: every RPC that describes the server
or a model (liveness, readiness, metadata, status) says over gRPC what the REST route says for
the same model, and the inference RPCs answer in the form the request came in. (The official
clients' checks, tests/grpc_clients/, drive the same RPCs against `python -m service`.)"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from deployments import install, serving_both_doors
from google.protobuf import json_format, wrappers_pb2
from payloads import GOOD_IMAGE
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from service import registry as registry_module
from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.third_party import tensorflow_serving_pb2 as tfs
from service.protocols.v2_codec import serialize_bytes

V2 = "/inference.GRPCInferenceService/"
PREDICTION = "/tensorflow.serving.PredictionService/"
STATUS = "/tensorflow.serving.ModelService/GetModelStatus"


@pytest.fixture(scope="module")
def doors(tmp_path_factory, exports):
    """The app over iris, cifar10, a model folder with no version (never ready) and one whose
    only version is broken (rejected), with its
    gRPC server: (HTTP client, gRPC channel)."""
    root = tmp_path_factory.mktemp("servicers") / "models"
    install(exports["iris"], root)
    install(exports["cifar10"], root)
    (root / "empty").mkdir()
    install(exports["iris"], root, "broken")
    load = registry_module.load_predictor

    def broken_refused(path, *args):
        if path.parent.name == "broken":
            raise registry_module.ModelError("a broken export")
        return load(path, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry_module, "load_predictor", broken_refused)
        with serving_both_doors(
            root, grpc_max_connection_age_s=0
        ) as both:  # connections kept: docs/api/grpc.md
            yield both


def rpc(channel, path: str, request, response_type):
    call = channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return call(request, timeout=30)


def code_of(channel, path: str, request, response_type) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, path, request, response_type)
    return caught.value.code(), caught.value.details()


def as_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# --- Open Inference Protocol v2 -------------------------------------------------------------


def test_server_liveness_readiness_and_metadata_are_rests(doors):
    client, channel = doors
    assert rpc(channel, V2 + "ServerLive", oip.ServerLiveRequest(), oip.ServerLiveResponse).live is True
    assert rpc(channel, V2 + "ServerReady", oip.ServerReadyRequest(), oip.ServerReadyResponse).ready is True
    metadata = rpc(channel, V2 + "ServerMetadata", oip.ServerMetadataRequest(), oip.ServerMetadataResponse)
    assert as_json(metadata) == client.get("/v2").json()


@pytest.mark.parametrize(
    ("name", "version", "ready"),
    [
        ("iris", "", True),
        ("iris", "1", True),
        ("iris", "2", False),
        ("empty", "", False),
        ("none", "", False),
    ],
)
def test_model_ready_is_true_only_for_a_live_model_and_version_and_never_an_error(
    doors, name, version, ready
):
    _, channel = doors
    request = oip.ModelReadyRequest(name=name, version=version)
    assert rpc(channel, V2 + "ModelReady", request, oip.ModelReadyResponse).ready is ready


@pytest.mark.parametrize("model", ["iris", "cifar10"])
def test_model_metadata_is_the_rest_routes(doors, model):
    client, channel = doors
    for version in ("", "1"):
        request = oip.ModelMetadataRequest(name=model, version=version)
        metadata = rpc(channel, V2 + "ModelMetadata", request, oip.ModelMetadataResponse)
        rest = client.get(f"/v2/models/{model}").json()
        # proto3 writes shapes as strings in JSON (int64): compared as numbers.
        for tensor in (*rest["inputs"], *rest["outputs"]):
            tensor["shape"] = [str(size) for size in tensor["shape"]]
        assert as_json(metadata) == rest


def test_model_metadata_of_a_version_not_served_is_not_found(doors):
    _, channel = doors
    code, message = code_of(
        channel,
        V2 + "ModelMetadata",
        oip.ModelMetadataRequest(name="iris", version="2"),
        oip.ModelMetadataResponse,
    )
    assert code == grpc.StatusCode.NOT_FOUND and "2" in message


def test_a_typed_request_is_answered_typed_and_only_the_outputs_asked_for(doors):
    client, channel = doors
    request = oip.ModelInferRequest(model_name="iris", model_version="1", id="call-7")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [5.1, 3.5, 1.4, 0.2]
    )
    request.outputs.add(name="probabilities")
    response = rpc(channel, V2 + "ModelInfer", request, oip.ModelInferResponse)
    rest = client.post(
        "/v2/models/iris/infer",
        json={
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
            ],
            "outputs": [{"name": "probabilities"}],
        },
    ).json()
    assert (response.model_name, response.model_version, response.id) == ("iris", "1", "call-7")
    assert [output.name for output in response.outputs] == ["probabilities"]
    assert not response.raw_output_contents
    np.testing.assert_allclose(response.outputs[0].contents.fp32_contents, rest["outputs"][0]["data"], 1e-6)


def test_a_raw_request_of_files_is_answered_raw(doors):
    _, channel = doors
    request = oip.ModelInferRequest(model_name="cifar10")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(serialize_bytes([GOOD_IMAGE, GOOD_IMAGE]))
    response = rpc(channel, V2 + "ModelInfer", request, oip.ModelInferResponse)
    assert len(response.raw_output_contents) == len(response.outputs) > 0
    assert not any(output.HasField("contents") for output in response.outputs)
    probabilities = [i for i, output in enumerate(response.outputs) if output.name == "probabilities"][0]
    rows = np.frombuffer(response.raw_output_contents[probabilities], "<f4").reshape(2, 10)
    np.testing.assert_allclose(rows.sum(axis=1), 1, atol=1e-5)


# --- TensorFlow Serving ---------------------------------------------------------------------


def metadata_request(model: str, fields=("signature_def",), **spec) -> tfs.GetModelMetadataRequest:
    return tfs.GetModelMetadataRequest(model_spec=tfs.ModelSpec(name=model, **spec), metadata_field=fields)


@pytest.mark.parametrize("model", ["iris", "cifar10"])
def test_get_model_metadata_is_the_rest_routes_with_its_runtime(doors, model):
    client, channel = doors
    response = rpc(
        channel, PREDICTION + "GetModelMetadata", metadata_request(model), tfs.GetModelMetadataResponse
    )
    rest = client.get(f"/v1/models/{model}/metadata").json()
    signatures = response.metadata["signature_def"]
    assert signatures.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    definitions = tfs.SignatureDefMap.FromString(signatures.value)
    # REST's metadata is the JSON form of the same message (TF Serving's own REST API says so).
    assert definitions == json_format.ParseDict(rest["metadata"]["signature_def"], tfs.SignatureDefMap())
    assert set(definitions.signature_def) == {"serving_default"}
    assert response.model_spec.name == model and response.model_spec.version.value == 1
    runtime = wrappers_pb2.StringValue()
    assert response.metadata["runtime"].Unpack(runtime) and runtime.value == rest["metadata"]["runtime"]


@pytest.mark.parametrize("fields", [(), ("signature_def", "signature_def"), ("runtime",)])
def test_get_model_metadata_asks_for_the_signatures_alone(doors, fields):
    _, channel = doors
    code, message = code_of(
        channel,
        PREDICTION + "GetModelMetadata",
        metadata_request("iris", fields),
        tfs.GetModelMetadataResponse,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signature_def" in message


def test_a_version_label_is_refused_by_name_and_a_number_is_served(doors):
    _, channel = doors
    labelled = metadata_request("iris", version_label="stable")
    code, message = code_of(channel, PREDICTION + "GetModelMetadata", labelled, tfs.GetModelMetadataResponse)
    assert code == grpc.StatusCode.NOT_FOUND and "no version label 'stable'" in message
    numbered = metadata_request("iris", version=wrappers_pb2.Int64Value(value=1))
    assert rpc(
        channel, PREDICTION + "GetModelMetadata", numbered, tfs.GetModelMetadataResponse
    ).model_spec.name
    missing = metadata_request("iris", version=wrappers_pb2.Int64Value(value=2))
    assert code_of(channel, PREDICTION + "GetModelMetadata", missing, tfs.GetModelMetadataResponse)[0] == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("model", "version"), [("iris", None), ("iris", 1), ("empty", None), ("broken", None)]
)
def test_get_model_status_is_the_rest_routes(doors, model, version):
    client, channel = doors
    spec = tfs.ModelSpec(name=model)
    if version is not None:
        spec.version.value = version
    response = rpc(channel, STATUS, tfs.GetModelStatusRequest(model_spec=spec), tfs.GetModelStatusResponse)
    rest = client.get(f"/v1/models/{model}" + (f"/versions/{version}" if version else "")).json()
    codes = {"OK": 0, "UNKNOWN": 2}  # tensorflow.error.Code
    assert [
        (
            str(s.version),
            tfs.ModelVersionStatus.State.Name(s.state),
            s.status.error_code,
            s.status.error_message,
        )
        for s in response.model_version_status
    ] == [
        (s["version"], s["state"], codes[s["status"]["error_code"]], s["status"]["error_message"])
        for s in rest["model_version_status"]
    ]


def predict_request(model: str, name: str, tensor, **spec) -> tfs.PredictRequest:
    return tfs.PredictRequest(model_spec=tfs.ModelSpec(name=model, **spec), inputs={name: tensor})


def strings(files: list[bytes], shape: list[int]) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), string_val=files
    )


def test_predict_answers_as_rest_does_with_the_model_spec_served(doors):
    client, channel = doors
    flower = [[5.1, 3.5, 1.4, 0.2]]
    request = predict_request("iris", "features", tf_make_tensor(flower), signature_name="serving_default")
    request.output_filter.append("probabilities")
    response = rpc(channel, PREDICTION + "Predict", request, tfs.PredictResponse)
    rest = client.post("/v1/models/iris:predict", json={"instances": flower}).json()
    assert (response.model_spec.name, response.model_spec.version.value) == ("iris", 1)
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == {"probabilities"}
    probabilities = response.outputs["probabilities"]
    assert probabilities.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in probabilities.tensor_shape.dim] == [1, 3]
    np.testing.assert_allclose(
        np.frombuffer(probabilities.tensor_content, "<f4"), rest["predictions"][0], 1e-6
    )


@pytest.mark.parametrize("shape", [[2], [2, 1]])
def test_predict_takes_encoded_images_as_strings_of_shape_n_or_n_by_1(doors, shape):
    _, channel = doors
    response = rpc(
        channel,
        PREDICTION + "Predict",
        predict_request("cifar10", "image", strings([GOOD_IMAGE] * 2, shape)),
        tfs.PredictResponse,
    )
    assert [d.size for d in response.outputs["probabilities"].tensor_shape.dim] == [2, 10]


@pytest.mark.parametrize("shape", [[1, 2], [2, 1, 1]])
def test_predict_refuses_encoded_images_of_any_other_shape(doors, shape):
    _, channel = doors
    request = predict_request("cifar10", "image", strings([GOOD_IMAGE] * 2, shape))
    assert code_of(channel, PREDICTION + "Predict", request, tfs.PredictResponse) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input 'image' of encoded images must have shape [n] (or [n, 1]); got {shape}",
    )


def test_predict_refuses_another_signature_or_other_inputs_by_name(doors):
    _, channel = doors
    flower = tf_make_tensor([[5.1, 3.5, 1.4, 0.2]])
    signature = predict_request("iris", "features", flower, signature_name="classify")
    assert code_of(channel, PREDICTION + "Predict", signature, tfs.PredictResponse) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "no signature 'classify'; the export serves 'serving_default'",
    )
    renamed = predict_request("iris", "petals", flower)
    assert code_of(channel, PREDICTION + "Predict", renamed, tfs.PredictResponse) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs 'petals'; the signature has one input, 'features'",
    )
    nothing = tfs.PredictRequest(model_spec=tfs.ModelSpec(name="iris"))
    assert code_of(channel, PREDICTION + "Predict", nothing, tfs.PredictResponse)[1] == (
        "inputs none; the signature has one input, 'features'"
    )


def tf_make_tensor(rows: list[list[float]]) -> tensor_pb2.TensorProto:
    array = np.array(rows, np.float32)
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
        tensor_content=array.tobytes(),
    )
