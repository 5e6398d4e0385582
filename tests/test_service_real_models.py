"""The trained models committed under models/ (or SERVICE_TEST_MODEL_DIR), served end to end:
HTTP must reproduce the exported signature's own accuracy. Skipped when the models or the
dataset are absent, except in CI (CIFAR_SERVING_REQUIRE_ALL=1), where that fails.

The CIFAR-10 test split is not available here, so the comparison runs on a sample of the
training images; what is checked is the gap between HTTP and offline, not the accuracy itself.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from deployments import offline, serving
from PIL import Image

from model_repository import existing_versions, load_metadata, read_metadata
from service.runtimes import load_runtime

pytestmark = pytest.mark.required_in_ci

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SERVICE_TEST_MODEL_DIR", ROOT / "models"))
CIFAR10_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-train.tar.gz"
PER_CLASS = 20


def newest(name: str) -> Path:
    versions = existing_versions(MODELS / name)
    if not versions:
        pytest.skip(f"no {name} model in {MODELS}")
    return MODELS / name / str(versions[-1])


@pytest.fixture(scope="module")
def real_client():
    if not any(existing_versions(path) for path in MODELS.glob("*")):
        pytest.skip(f"no exported models in {MODELS}")
    with serving(MODELS, max_batch_size=64) as client:
        yield client


@pytest.fixture(scope="module")
def cifar10_sample() -> tuple[list[bytes], np.ndarray, list[str]]:
    """JPEG files, their decoded pixels and their class names: PER_CLASS of each class."""
    if not CIFAR10_TAR.exists():
        pytest.skip(f"{CIFAR10_TAR} not found")
    files, labels, taken = [], [], {}
    with tarfile.open(CIFAR10_TAR) as archive:
        for member in archive:
            label = Path(member.name).parent.name
            if member.isfile() and member.name.endswith(".jpg") and taken.get(label, 0) < PER_CLASS:
                taken[label] = taken.get(label, 0) + 1
                files.append(archive.extractfile(member).read())
                labels.append(label)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
    return files, pixels, labels


def predict_labels(client, files: list[bytes], model: str) -> list[str]:
    labels = []
    for start in range(0, len(files), 32):
        parts = [("file", data) for data in files[start : start + 32]]
        response = client.post(f"/predict/image/{model}", files=parts)
        assert response.status_code == 200, response.text
        body = response.json()
        labels += [p["label"] for p in body.get("predictions", [body])]
    return labels


def accuracy(predicted, truth) -> float:
    return float(np.mean(np.array(predicted) == np.array(truth)))


def enlarged_png(pixels: np.ndarray, scale: float, interpolator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((round(32 * scale),) * 2, interpolator).save(buffer, "PNG")
    return buffer.getvalue()


def test_every_model_is_served(real_client):
    served = {m["name"]: m for m in real_client.get("/models").json()["models"]}
    for name in served:
        assert served[name]["ready"], served[name]["status"]
        assert served[name]["live_version"] == str(existing_versions(MODELS / name)[-1])


def test_cifar10_over_http_matches_offline_at_32x32(real_client, cifar10_sample):
    version = newest("cifar10")
    files, pixels, truth = cifar10_sample
    labels = load_metadata(version)["labels"]
    # offline: the runtime that serves (on this CPU, the export's fast form where it declares one)
    (served,) = [m for m in real_client.get("/models").json()["models"] if m["name"] == "cifar10"]
    runtime = load_runtime(version, read_metadata(version), "/CPU:0", served["runtime"])
    offline_labels = [labels[i] for i in runtime.run(pixels)["probabilities"].argmax(1)]
    http_labels = predict_labels(real_client, files, "cifar10")
    assert abs(accuracy(http_labels, truth) - accuracy(offline_labels, truth)) <= 0.005
    assert http_labels == offline_labels  # the same pixels reach the model


@pytest.mark.parametrize(
    "interpolator, scale", [(Image.BICUBIC, 2), (Image.BICUBIC, 3.5), (Image.BICUBIC, 8), (Image.NEAREST, 4)]
)
def test_cifar10_over_http_survives_enlarged_uploads(real_client, cifar10_sample, interpolator, scale):
    version = newest("cifar10")
    _, pixels, truth = cifar10_sample
    labels = load_metadata(version)["labels"]
    offline_accuracy = accuracy([labels[i] for i in offline(version, pixels).argmax(1)], truth)
    enlarged = [enlarged_png(p, scale, interpolator) for p in pixels]
    assert accuracy(predict_labels(real_client, enlarged, "cifar10"), truth) >= offline_accuracy - 0.01


def test_iris_over_http_matches_offline(real_client):
    from sklearn.datasets import load_iris

    version = newest("iris")
    data = load_iris()
    rows = data.data.astype(np.float32)
    expected = offline(version, rows)
    response = real_client.post("/predict/iris", json={"instances": rows[:64].tolist()})
    got = np.array([list(p["probabilities"].values()) for p in response.json()["predictions"]])
    assert np.allclose(got, expected[:64], atol=1e-5)
