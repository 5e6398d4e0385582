"""Shared fixtures: tiny but real SavedModels, exported once per session by `training.export`
exactly as the trained ones are, and apps serving copies of them."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import keras
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from training.data import CIFAR10_LABELS, IRIS_FEATURES
from training.export import export_model

IRIS_LABELS = ["setosa", "versicolor", "virginica"]


def tiny_image_model(height: int, width: int, classes: int, seed: int) -> keras.Model:
    """Raw uint8 RGB in, probabilities out, normalization inside: the shape of the real CNN."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((height, width, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def tiny_feature_model(features: int, classes: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), dtype="float32", name="features")
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(inputs))


def export(model: keras.Model, root: Path, name: str, input_spec: dict, labels: list[str]) -> Path:
    metadata = {
        "labels": labels,
        "metrics": {"test": {"accuracy": 0.5, "examples": 10}},
        "training": {"command": "pytest tests/conftest.py", "seed": 0},
    }
    return export_model(model, lambda x: model(x, training=False), root, name, input_spec, metadata)


IMAGE_SPEC = {"name": "image", "shape": [32, 32, 3], "dtype": "uint8", "color": "RGB", "range": [0, 255]}
IRIS_SPEC = {
    "name": "features",
    "shape": [4],
    "dtype": "float32",
    "feature_names": IRIS_FEATURES,
    "unit": "cm",
}


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Version folders: cifar10 v1 and v2 (other weights), iris v1, and a 16x24 image model."""
    root = tmp_path_factory.mktemp("exports")
    return {
        "cifar10": export(tiny_image_model(32, 32, 10, seed=1), root, "cifar10", IMAGE_SPEC, CIFAR10_LABELS),
        "cifar10-v2": export(
            tiny_image_model(32, 32, 10, seed=2), root, "cifar10", IMAGE_SPEC, CIFAR10_LABELS
        ),
        "iris": export(tiny_feature_model(4, 3, seed=3), root, "iris", IRIS_SPEC, IRIS_LABELS),
        "wide": export(
            tiny_image_model(16, 24, 2, seed=4),
            root,
            "wide",
            {**IMAGE_SPEC, "shape": [16, 24, 3]},
            ["left", "right"],
        ),
    }


def install(exported: Path, model_dir: Path, name: str | None = None, version: int = 1) -> Path:
    """Copy an exported version into `model_dir/<name>/<version>`, as a deployment would."""
    target = model_dir / (name or exported.parent.name) / str(version)
    shutil.copytree(exported, target)
    return target


def publish(exported: Path, model_dir: Path, version: int, name: str | None = None) -> Path:
    """Install atomically, as `training.export` does: copy under a hidden name, then rename."""
    folder = model_dir / (name or exported.parent.name)
    staging = folder / f".staging-{version}"
    shutil.copytree(exported, staging)
    return staging.rename(folder / str(version))


def wait_for(condition, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
    return result


@pytest.fixture
def model_dir(tmp_path, exports) -> Path:
    """A fresh MODEL_DIR with cifar10 v1 and iris v1, for tests that change it."""
    root = tmp_path / "models"
    install(exports["cifar10"], root)
    install(exports["iris"], root)
    return root


def settings(model_dir: Path, **overrides) -> Settings:
    # Small batches and a short poll keep the tests fast; hot reload is off unless asked for.
    return Settings(**{"model_dir": model_dir, "poll_interval_s": 0, "max_batch_size": 16, **overrides})


def wait_ready(client: TestClient, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.05)
    return response.json()


@contextlib.contextmanager
def serving(model_dir: Path, ready: bool = True, **overrides):
    """A TestClient of an app over `model_dir`, its lifespan running; ready unless told not to wait.
    Server errors come back as responses (500), as a real client would see them."""
    with TestClient(create_app(settings(model_dir, **overrides)), raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory, exports) -> Path:
    root = tmp_path_factory.mktemp("shared") / "models"
    install(exports["cifar10"], root)
    install(exports["iris"], root)
    return root


@pytest.fixture(scope="session")
def client(shared_models):
    """One app for the tests that only read: cifar10 v1 and iris v1, ready."""
    with serving(shared_models) as client:
        yield client
