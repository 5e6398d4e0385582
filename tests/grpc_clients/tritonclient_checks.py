"""tritonclient.grpc, sync and asyncio, unchanged against the service: health, metadata, every
input the v2 models take (raw like every tritonclient request), answers equal to the export's,
and each failure as the status code a Triton user expects. Run by tests/test_protocol_grpc.py in
a process of its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from export import (
    MAX_BATCH,
    TARGET,
    TOLERANCE,
    best_labels,
    export_outputs,
    flowers,
    photos,
    pixels,
    version,
)
from grpc import StatusCode
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client():
    with triton.InferenceServerClient(TARGET) as c:
        yield c


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array)


def failure(client, model: str, inputs: list, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs, **kwargs)
    return caught.value


def test_server_and_models_report_live_ready_and_their_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "cifar-serving"
    assert client.is_model_ready("cifar10") and client.is_model_ready("cifar10", version("cifar10"))
    assert not client.is_model_ready("cifar10", "999")
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_model_metadata("cifar10", as_json=True)
    assert metadata["versions"] == [version("cifar10")]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("image", "UINT8", ["-1", "32", "32", "3"]),
        ("image_bytes", "BYTES", ["-1"]),
    ]
    assert [(t["name"], t["datatype"]) for t in metadata["outputs"]] == [
        ("probabilities", "FP32"),
        ("label", "BYTES"),
        ("ood_score", "FP32"),
        ("abstain", "BOOL"),
    ]


def test_encoded_photos_get_the_exports_answers(client):
    files = photos()
    result = client.infer("cifar10", [tensor("image_bytes", np.array(files, object), "BYTES")])
    expected = export_outputs("cifar10", pixels(files))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=TOLERANCE)
    assert [x.decode() for x in result.as_numpy("label")] == best_labels("cifar10", expected)
    assert result.get_response().model_version == version("cifar10")


def test_raw_pixels_get_the_exports_answers(client):
    rows = pixels(photos())
    result = client.infer("cifar10", [tensor("image", rows, "UINT8")])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), export_outputs("cifar10", rows), atol=TOLERANCE
    )


def test_all_iris_flowers_get_the_exports_answers_in_batches(client):
    for batch in np.array_split(flowers(), 3):
        result = client.infer("iris", [tensor("features", batch, "FP32")])
        expected = export_outputs("iris", batch)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=TOLERANCE)
        assert [x.decode() for x in result.as_numpy("label")] == best_labels("iris", expected)


def test_only_the_outputs_asked_for_are_answered(client):
    asked = [triton.InferRequestedOutput("label")]
    result = client.infer("iris", [tensor("features", flowers()[:2], "FP32")], outputs=asked)
    assert result.as_numpy("probabilities") is None
    assert len(result.as_numpy("label")) == 2


def test_asyncio_client_gets_the_same_answers():
    async def ask():
        async with triton_aio.InferenceServerClient(TARGET) as c:
            assert await c.is_server_ready()
            files = photos()
            images = triton_aio.InferInput("image_bytes", [len(files)], "BYTES")
            images.set_data_from_numpy(np.array(files, object))
            features = triton_aio.InferInput("features", [4, 4], "FP32")
            features.set_data_from_numpy(flowers()[:4])
            return await asyncio.gather(c.infer("cifar10", [images]), c.infer("iris", [features]))

    photos_result, flowers_result = asyncio.run(ask())
    np.testing.assert_allclose(
        photos_result.as_numpy("probabilities"), export_outputs("cifar10", pixels(photos())), atol=TOLERANCE
    )
    np.testing.assert_allclose(
        flowers_result.as_numpy("probabilities"), export_outputs("iris", flowers()[:4]), atol=TOLERANCE
    )


# --- failures, each with the code a gRPC client branches on and the REST message --------------


def test_unknown_model_and_a_version_not_live_are_not_found(client):
    features = [tensor("features", flowers()[:1], "FP32")]
    assert failure(client, "no-such-model", features).status() == str(StatusCode.NOT_FOUND)
    error = failure(client, "iris", features, model_version="999")
    assert error.status() == str(StatusCode.NOT_FOUND)
    assert f"version {version('iris')} is live" in error.message()


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("iris", lambda: [tensor("features", flowers()[:2, :3].copy(), "FP32")], "must have shape"),
        ("iris", lambda: [tensor("features", flowers()[:2].astype(np.float64), "FP64")], "must be FP32"),
        ("iris", lambda: [tensor("petals", flowers()[:2], "FP32")], "unknown input 'petals'"),
        ("iris", lambda: [tensor("features", np.full((1, 4), np.nan, np.float32), "FP32")], "finite"),
        ("cifar10", lambda: [tensor("image_bytes", np.array([b"\xff\xd8 not a jpeg"], object), "BYTES")], ""),
        (
            "cifar10",
            lambda: [tensor("image_bytes", np.array([b"plain text"], object), "BYTES")],
            "not an image",
        ),
        (
            "cifar10",
            lambda: [tensor("image", np.zeros((1, 16, 16, 3), np.uint8), "UINT8")],
            "must have shape",
        ),
    ],
    ids=["shape", "datatype", "input-name", "not-finite", "corrupt-image", "not-an-image", "image-size"],
)
def test_input_the_model_cannot_take_is_an_invalid_argument(client, model, inputs, message):
    error = failure(client, model, inputs())
    assert error.status() == str(StatusCode.INVALID_ARGUMENT), error
    assert message in error.message()


def test_an_unknown_output_is_an_invalid_argument(client):
    error = failure(
        client,
        "iris",
        [tensor("features", flowers()[:1], "FP32")],
        outputs=[triton.InferRequestedOutput("logits")],
    )
    assert error.status() == str(StatusCode.INVALID_ARGUMENT)
    assert "unknown output 'logits'" in error.message()


def test_more_rows_than_one_model_call_takes_exhaust_a_resource(client):
    rows = np.repeat(flowers()[:1], MAX_BATCH + 1, axis=0)
    error = failure(client, "iris", [tensor("features", rows, "FP32")])
    assert error.status() == str(StatusCode.RESOURCE_EXHAUSTED)
    assert f"more than {MAX_BATCH} instances" in error.message()
