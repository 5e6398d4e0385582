"""The prediction endpoints through HTTP, on SavedModels exported by `training.export`."""

from __future__ import annotations

import numpy as np
import pytest
from deployments import IRIS_LABELS, install, offline, serving
from payloads import encode, photo, png
from payloads import random_images as images
from PIL import Image

from service.resizing import REDUCING_GAP
from training.data import CIFAR10_LABELS, IRIS_FEATURES


def probabilities(body: dict) -> np.ndarray:
    return np.array(list(body["probabilities"].values()))


def test_image_prediction_names_model_version_and_every_class(client, exports):
    pixels = images(1)
    response = client.post("/predict/image", files={"file": ("cat.png", png(pixels[0]), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == ("cifar10", "1")
    assert list(body["probabilities"]) == CIFAR10_LABELS  # from metadata.json, in output order
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert "top_k" not in body
    expected = offline(exports["cifar10"], pixels)[0]
    assert np.allclose(probabilities(body), expected, atol=1e-5)


def test_top_k_lists_the_most_probable_first(client):
    response = client.post("/predict/image?top_k=3", files={"file": png(images(1)[0])})
    body = response.json()
    top = body["top_k"]
    assert [entry["label"] for entry in top] == sorted(
        body["probabilities"], key=body["probabilities"].get, reverse=True
    )[:3]
    assert top[0]["label"] == body["label"]
    everything = client.post("/predict/image?top_k=50", files={"file": png(images(1)[0])}).json()
    assert len(everything["top_k"]) == len(CIFAR10_LABELS)


def test_several_files_are_answered_in_order(client, exports):
    pixels = images(5, seed=1)
    files = [("file", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
    response = client.post("/predict/image", files=files)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    got = np.array([list(p["probabilities"].values()) for p in predictions])
    assert np.allclose(got, offline(exports["cifar10"], pixels), atol=1e-5)


def test_image_model_can_be_named_in_the_path(tmp_path, exports):
    """Two image models: each named one answers, with its own classes and weights, and the
    unnamed route keeps to the first by name."""
    root = tmp_path / "models"
    install(exports["cifar10"], root)
    install(exports["wide"], root)
    pixels = images(1)
    upload = {"file": png(pixels[0])}
    with serving(root) as client:
        wide = client.post("/predict/image/wide", files=upload).json()
        cifar10 = client.post("/predict/image/cifar10", files=upload).json()
        unnamed = client.post("/predict/image", files=upload).json()
    assert (wide["model"], list(wide["probabilities"])) == ("wide", ["left", "right"])
    wide_input = np.asarray(Image.fromarray(pixels[0]).resize((24, 16), Image.LANCZOS))
    assert np.allclose(probabilities(wide), offline(exports["wide"], wide_input[None])[0], atol=1e-5)
    assert (cifar10["model"], list(cifar10["probabilities"])) == ("cifar10", CIFAR10_LABELS)
    assert np.allclose(probabilities(cifar10), offline(exports["cifar10"], pixels)[0], atol=1e-5)
    assert unnamed == cifar10


def test_uploads_of_any_size_are_resized_to_the_model_input(client, exports):
    big = images(1, size=(640, 480))[0]
    response = client.post("/predict/image", files={"file": png(big)})
    assert response.status_code == 200
    resized = Image.fromarray(big).resize((32, 32), Image.LANCZOS, reducing_gap=REDUCING_GAP)
    expected = offline(exports["cifar10"], np.asarray(resized)[None])[0]
    assert np.allclose(probabilities(response.json()), expected, atol=1e-5)


def test_the_format_comes_from_the_bytes_not_the_file_name_or_type(client):
    jpeg = encode(photo(), "JPEG")
    as_jpeg = client.post("/predict/image", files={"file": ("cat.jpg", jpeg, "image/jpeg")})
    as_png = client.post("/predict/image", files={"file": ("cat.png", jpeg, "image/png")})
    assert as_jpeg.status_code == as_png.status_code == 200
    assert as_png.json() == as_jpeg.json()


def test_non_square_model_gets_its_own_input_size(tmp_path, exports):
    root = tmp_path / "models"
    install(exports["wide"], root)
    with serving(root) as client:
        body = client.post("/predict/image", files={"file": png(images(1)[0])}).json()
        assert body["model"] == "wide" and list(body["probabilities"]) == ["left", "right"]


def test_one_instance_by_features_or_by_name(client, exports):
    features = [5.1, 3.5, 1.4, 0.2]
    by_list = client.post("/predict/iris", json={"features": features})
    by_name = client.post("/predict/iris", json=dict(zip(IRIS_FEATURES, features, strict=True)))
    assert by_list.status_code == by_name.status_code == 200
    assert by_list.json() == by_name.json()
    body = by_list.json()
    assert (body["model"], body["version"]) == ("iris", "1")
    assert list(body["probabilities"]) == IRIS_LABELS
    expected = offline(exports["iris"], np.array([features], np.float32))[0]
    assert np.allclose(probabilities(body), expected, atol=1e-6)


def test_named_features_may_come_in_any_order(client):
    features = dict(zip(IRIS_FEATURES, [6.7, 3.0, 5.2, 2.3], strict=True))
    shuffled = dict(reversed(list(features.items())))
    in_order = client.post("/predict/iris", json=features)
    reversed_order = client.post("/predict/iris", json=shuffled)
    assert in_order.status_code == reversed_order.status_code == 200
    assert in_order.json() == reversed_order.json()


def test_instances_are_answered_in_order(client, exports):
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    response = client.post("/predict/iris?top_k=2", json={"instances": rows})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 3 and all(len(p["top_k"]) == 2 for p in predictions)
    got = np.array([list(p["probabilities"].values()) for p in predictions])
    assert np.allclose(got, offline(exports["iris"], np.array(rows, np.float32)), atol=1e-6)
    single = client.post("/predict/iris", json={"instances": rows[:1]}).json()
    assert list(single) == ["predictions"]  # the form asked for decides the shape of the answer


def test_integers_are_numbers(client):
    as_integers = client.post("/predict/iris", json={"features": [5, 3, 1, 0]})
    as_floats = client.post("/predict/iris", json={"features": [5.0, 3.0, 1.0, 0.0]})
    assert as_integers.status_code == 200
    assert as_integers.json() == as_floats.json()
