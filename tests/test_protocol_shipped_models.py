"""The shipped models under models/ (or SERVICE_TEST_MODEL_DIR) through both protocols and the
official clients, end to end on `python -m service`: the same labels and probabilities as the
native routes, raw pixels as the SavedModel itself answers, all 150 Iris flowers. Skipped when
the models are absent, except in CI, where the shipped models must be there."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.http as triton
from kserve import InferenceRESTClient, RESTConfig
from PIL import Image
from served import running_service
from sklearn.datasets import load_iris

from service.images import decode_image

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SERVICE_TEST_MODEL_DIR", ROOT / "models"))
MAX_BATCH = 64

pytestmark = [pytest.mark.required_in_ci, pytest.mark.server]


def newest(name: str) -> Path:
    versions = sorted((int(p.name) for p in (MODELS / name).glob("*") if p.name.isdigit()), reverse=True)
    if not versions:
        pytest.skip(f"no {name} model in {MODELS}")
    return MODELS / name / str(versions[0])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    newest("cifar10"), newest("iris")
    log = tmp_path_factory.getbasetemp() / "shipped-server.log"
    with running_service(MODELS, log, MAX_BATCH_SIZE=str(MAX_BATCH)) as url:
        yield url


@pytest.fixture
def client(base):
    with triton.InferenceServerClient(base.removeprefix("http://"), network_timeout=120) as c:
        yield c


def photos() -> list[bytes]:
    """The samples, and the same photos as other clients send them: large JPEG, PNG with alpha."""
    files = [path.read_bytes() for path in sorted((ROOT / "samples").glob("*.jpg"))]
    assert files, "samples/ (a link to service/static/samples/) holds the sample photos"
    for data, (size, mode, fmt) in zip(
        files, [((480, 480), "RGB", "JPEG"), ((96, 64), "RGBA", "PNG")], strict=False
    ):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert(mode).resize(size).save(buffer, fmt)
        files.append(buffer.getvalue())
    return files


def native(base: str, files: list[bytes]) -> list[dict]:
    response = httpx.post(f"{base}/predict/image", files=[("file", f) for f in files], timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_tritonclient_binary_images_get_the_labels_of_predict_image(base, client):
    files = photos()
    expected = native(base, files)
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    result = client.infer("cifar10", [tensor.set_data_from_numpy(np.array(files, object))])
    assert [x.decode() for x in result.as_numpy("label")] == [p["label"] for p in expected]
    want = np.array([list(p["probabilities"].values()) for p in expected], np.float32)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want)


def test_raw_pixels_get_the_savedmodels_own_output(client):
    version_dir = newest("cifar10")
    metadata = json.loads((version_dir / "assets.extra" / "metadata.json").read_text())
    height, width = metadata["input"]["shape"][1:3]
    pixels = np.stack([decode_image(f, (width, height), 10**8) for f in photos()])
    tensor = triton.InferInput(metadata["input"]["name"], list(pixels.shape), "UINT8").set_data_from_numpy(
        pixels
    )
    result = client.infer("cifar10", [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
    signature = tf.saved_model.load(str(version_dir)).signatures[metadata["signature"]]
    own = signature(**{metadata["input"]["name"]: tf.constant(pixels)})[metadata["output"]["name"]].numpy()
    np.testing.assert_allclose(result.as_numpy("probabilities"), own, rtol=1e-4, atol=1e-6)
    assert (result.as_numpy("probabilities").argmax(1) == own.argmax(1)).all()


def test_tf_serving_b64_images_get_the_answers_of_predict_image(base):
    files = photos()
    instances = [{"b64": base64.b64encode(f).decode()} for f in files]
    response = httpx.post(f"{base}/v1/models/cifar10:predict", json={"instances": instances}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [list(p["probabilities"].values()) for p in native(base, files)]


def test_all_150_iris_flowers_get_the_answers_of_predict_iris_through_both_protocols(base, client):
    flowers = load_iris().data.astype(np.float32)
    chunks = [flowers[i : i + MAX_BATCH] for i in range(0, len(flowers), MAX_BATCH)]
    expected = []
    for chunk in chunks:
        response = httpx.post(f"{base}/predict/iris", json={"instances": chunk.tolist()})
        expected += response.json()["predictions"]
    want = np.array([list(p["probabilities"].values()) for p in expected], np.float32)

    v2_probabilities, v2_labels = [], []
    for chunk in chunks:
        tensor = triton.InferInput("features", list(chunk.shape), "FP32").set_data_from_numpy(chunk)
        result = client.infer("iris", [tensor])
        v2_probabilities.append(result.as_numpy("probabilities"))
        v2_labels += [x.decode() for x in result.as_numpy("label")]
    np.testing.assert_array_equal(np.concatenate(v2_probabilities), want)
    assert v2_labels == [p["label"] for p in expected]

    async def v1_predictions():
        kserve_client = InferenceRESTClient(RESTConfig(protocol="v1"))
        try:
            answers = [
                await kserve_client.infer(base, {"instances": chunk.tolist()}, model_name="iris")
                for chunk in chunks
            ]
        finally:
            await kserve_client.close()
        return [row for answer in answers for row in answer["predictions"]]

    assert asyncio.run(v1_predictions()) == want.tolist()
