"""tensorflow-serving-api's stubs unchanged against the service, as a TF Serving user calls
them: Predict with tensors by the signature's names (`image` as pixels or as encoded files,
`features`), GetModelMetadata, ModelService.GetModelStatus; answers equal to the export's.
Run by tests/test_protocol_grpc.py in a process of its own."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from export import TARGET, TOLERANCE, export_outputs, flowers, photos, pixels, version
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


@pytest.fixture(scope="module")
def channel():
    with grpc.insecure_channel(TARGET) as c:
        yield c


@pytest.fixture(scope="module")
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict(stub, model: str, inputs: dict, **spec) -> predict_pb2.PredictResponse:
    """Predict on `model`; `spec`: the ModelSpec's other fields (version as a number)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return stub.Predict(request, timeout=60)


def failure(stub, model: str, inputs: dict, **spec) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        predict(stub, model, inputs, **spec)
    return caught.value


def test_pixels_get_the_exports_answers_under_the_signatures_names(prediction):
    rows = pixels(photos())
    response = predict(prediction, "cifar10", {"image": rows}, signature_name="serving_default")
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), export_outputs("cifar10", rows), atol=TOLERANCE
    )
    assert response.model_spec.name == "cifar10"
    assert str(response.model_spec.version.value) == version("cifar10")


def test_encoded_photos_as_strings_get_the_exports_answers(prediction):
    files = photos()
    response = predict(prediction, "cifar10", {"image": np.array(files, object)})
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]),
        export_outputs("cifar10", pixels(files)),
        atol=TOLERANCE,
    )


def test_all_iris_flowers_get_the_exports_answers(prediction):
    for batch in np.array_split(flowers(), 3):
        response = predict(prediction, "iris", {"features": batch})
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["probabilities"]), export_outputs("iris", batch), atol=TOLERANCE
        )


def test_metadata_is_the_signature_def_of_the_export(prediction):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "cifar10"
    response = prediction.GetModelMetadata(request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    image = signature.inputs["image"]
    assert tf.dtypes.as_dtype(image.dtype) == tf.uint8
    assert [d.size for d in image.tensor_shape.dim] == [-1, 32, 32, 3]
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
    assert signature.method_name == "tensorflow/serving/predict"


def test_model_status_reports_the_live_version_available(channel):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "iris"
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=60)
    (status,) = response.model_version_status
    assert str(status.version) == version("iris")
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_unknown_models_versions_and_labels_are_not_found(prediction):
    features = {"features": flowers()[:1]}
    assert failure(prediction, "no-such-model", features).code() == grpc.StatusCode.NOT_FOUND
    assert failure(prediction, "iris", features, version=999).code() == grpc.StatusCode.NOT_FOUND
    assert failure(prediction, "iris", features, version_label="stable").code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("inputs", "spec", "message"),
    [
        ({"petals": flowers()[:1]}, {}, "the signature has one input, 'features'"),
        ({"features": flowers()[:1]}, {"signature_name": "predict"}, "no signature 'predict'"),
        ({"features": flowers()[:1].astype(np.float64)}, {}, "must be float32"),
        ({"features": flowers()[:1, :3]}, {}, "must have shape"),
        ({"features": np.array([b"not numbers"], object)}, {}, "takes numbers"),
    ],
    ids=["input-name", "signature", "dtype", "shape", "strings-to-numbers"],
)
def test_input_the_signature_cannot_take_is_an_invalid_argument(prediction, inputs, spec, message):
    error = failure(prediction, "iris", inputs, **spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert message in error.details()
