"""Every image answer of a model that declares an out-of-distribution score carries the score and
whether it abstains, on every door; models without one (older exports, iris) answer as before.

The tiny scored model's score is the mean pixel value / 255 (a real export's is a head on the
network's features, `training.ood`), declared with threshold 0.5: a white image abstains, a
black one does not, so each door's fields can be checked exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from deployments import IMAGE_SPEC, install, serving_both_doors, tiny_image_model
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from model_repository import load_metadata, write_metadata
from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.third_party import tensorflow_serving_pb2 as tfs
from training.data import CIFAR10_LABELS
from training.export import export_model

THRESHOLD = 0.5


def png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(out, "PNG")
    return out.getvalue()


WHITE, BLACK = png(255), png(0)


@pytest.fixture(scope="module")
def scored_models(tmp_path_factory, exports):
    """MODEL_DIR with `scored` v1 (probabilities and `ood_score`) and cifar10 v1 (no score)."""
    model = tiny_image_model(32, 32, 10, seed=7)

    def predict(images):
        pixels = tf.cast(images, tf.float32)
        return {
            "probabilities": model(images, training=False),
            "ood_score": tf.reduce_mean(pixels, axis=[1, 2, 3]) / 255.0,
        }

    root = tmp_path_factory.mktemp("scored-exports")
    metadata = {"labels": CIFAR10_LABELS, "training": {"command": "pytest", "seed": 0}}
    exported = export_model(model, predict, root, "scored", IMAGE_SPEC, metadata)
    declared = load_metadata(exported)
    declared["ood"] = {
        "output": "ood_score",
        "method": "mean brightness (a test double)",
        "threshold": THRESHOLD,
    }
    write_metadata(exported, declared)
    models = tmp_path_factory.mktemp("scored") / "models"
    install(exported, models)
    install(exports["cifar10"], models)
    return models


@pytest.fixture(scope="module")
def doors(scored_models):
    with serving_both_doors(scored_models) as (client, channel):
        yield client, channel


def native(client, files: list[bytes], model: str = "scored", **params):
    response = client.post(
        f"/predict/image/{model}",
        files=[("file", (f"{i}.png", f)) for i, f in enumerate(files)],
        params=params,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body.get("predictions", [body])


def test_each_native_answer_has_the_score_and_abstains_above_the_threshold(doors):
    client, _ = doors
    white, black = native(client, [WHITE, BLACK])
    assert white["ood_score"] == pytest.approx(1.0) and white["abstain"] is True
    assert black["ood_score"] == pytest.approx(0.0) and black["abstain"] is False
    assert set(white["probabilities"]) == set(CIFAR10_LABELS) and white["label"] in CIFAR10_LABELS


def test_a_request_may_set_its_own_threshold(doors):
    client, _ = doors
    grey = png(128)  # score 128/255 = 0.502: above the model's 0.5
    assert native(client, [grey])[0]["abstain"] is True
    assert native(client, [grey], abstain_threshold=0.6)[0]["abstain"] is False
    assert native(client, [BLACK], abstain_threshold=-1)[0]["abstain"] is True
    assert native(client, [BLACK], abstain_threshold=0)[0]["abstain"] is False  # above it, not at it


@pytest.mark.parametrize("bad", ["nan", "inf", "high"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(doors, bad):
    client, _ = doors
    response = client.post(
        "/predict/image/scored", files=[("file", ("a.png", BLACK))], params={"abstain_threshold": bad}
    )
    assert response.status_code == 422 and "abstain_threshold" in response.text


def test_a_model_without_a_score_answers_as_before(doors):
    client, _ = doors
    (answer,) = native(client, [WHITE], model="cifar10", abstain_threshold=0.1)
    assert "ood_score" not in answer and "abstain" not in answer
    metadata = client.get("/v2/models/cifar10").json()
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]


def test_v2_answers_the_score_and_abstain_as_outputs_and_on_request(doors):
    client, _ = doors
    metadata = client.get("/v2/models/scored").json()
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
        "probabilities": "FP32",
        "label": "BYTES",
        "ood_score": "FP32",
        "abstain": "BOOL",
    }
    pixels = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (255, 0)])
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    outputs = {o["name"]: o for o in client.post("/v2/models/scored/infer", json=body).json()["outputs"]}
    assert outputs["ood_score"]["data"] == pytest.approx([1.0, 0.0]) and outputs["abstain"]["data"] == [
        True,
        False,
    ]
    asked = {**body, "outputs": [{"name": "abstain"}]}
    answer = client.post("/v2/models/scored/infer", json=asked).json()
    assert [(o["name"], o["data"]) for o in answer["outputs"]] == [("abstain", [True, False])]


def test_tfserving_answers_the_probabilities_alone_unless_the_score_is_asked_for(doors):
    client, _ = doors
    rows = [np.full((32, 32, 3), v, np.uint8).tolist() for v in (255, 0)]
    plain = client.post("/v1/models/scored:predict", json={"instances": rows}).json()
    assert np.asarray(plain["predictions"]).shape == (2, 10)
    asked = {"instances": rows, "output_filter": ["probabilities", "ood_score", "abstain"]}
    named = client.post("/v1/models/scored:predict", json=asked).json()["predictions"]
    assert [(p["ood_score"], p["abstain"]) for p in named] == [(pytest.approx(1.0), True), (0.0, False)]
    columnar = {"inputs": rows, "output_filter": ["abstain"]}
    assert client.post("/v1/models/scored:predict", json=columnar).json() == {"outputs": [True, False]}
    signature = client.get("/v1/models/scored/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert set(signature["serving_default"]["outputs"]) == {"probabilities", "ood_score"}
    refused = client.post("/v1/models/cifar10:predict", json={**asked, "instances": rows})
    assert refused.status_code == 422 and "ood_score" in refused.json()["error"]


def test_grpc_answers_the_score_on_both_protocols(doors):
    _, channel = doors
    files = np.array([WHITE, BLACK], object)

    def call(path, request, response_type):
        return channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )(request, timeout=30)

    infer = oip.ModelInferRequest(model_name="scored")
    infer.inputs.add(name="image_bytes", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        files.tolist()
    )
    infer.outputs.add(name="ood_score")
    infer.outputs.add(name="abstain")
    answer = call("/inference.GRPCInferenceService/ModelInfer", infer, oip.ModelInferResponse)
    by_name = {o.name: o for o in answer.outputs}
    assert list(by_name["ood_score"].contents.fp32_contents) == pytest.approx([1.0, 0.0])
    assert list(by_name["abstain"].contents.bool_contents) == [True, False]

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)])
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=files.tolist())
    predict = tfs.PredictRequest(
        model_spec=tfs.ModelSpec(name="scored"),
        inputs={"image": strings},
        output_filter=["ood_score", "abstain"],
    )
    outputs = call("/tensorflow.serving.PredictionService/Predict", predict, tfs.PredictResponse).outputs
    assert np.frombuffer(outputs["ood_score"].tensor_content, "<f4") == pytest.approx([1.0, 0.0])
    assert outputs["abstain"].dtype == types_pb2.DT_BOOL
    assert np.frombuffer(outputs["abstain"].tensor_content, np.bool_).tolist() == [True, False]
    plain = tfs.PredictRequest(model_spec=tfs.ModelSpec(name="scored"), inputs={"image": strings})
    assert set(call("/tensorflow.serving.PredictionService/Predict", plain, tfs.PredictResponse).outputs) == {
        "probabilities"
    }
