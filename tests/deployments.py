"""Tiny but real SavedModels, exported by `training.export` exactly as the trained ones are,
installed into model folders, and apps serving them."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import grpc
import keras
import numpy as np
import tensorflow as tf
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from served import free_port

from service.app import create_app
from service.settings import Settings
from training.data import IRIS_FEATURES
from training.export import export_model

IRIS_LABELS = ["setosa", "versicolor", "virginica"]
IMAGE_SPEC = {"name": "image", "shape": [32, 32, 3], "dtype": "uint8", "color": "RGB", "range": [0, 255]}
IRIS_SPEC = {
    "name": "features",
    "shape": [4],
    "dtype": "float32",
    "feature_names": IRIS_FEATURES,
    "unit": "cm",
}


def tiny_image_model(height: int, width: int, classes: int, seed: int) -> keras.Model:
    """Raw uint8 RGB in, probabilities out, normalization inside: the shape of the real CNN."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((height, width, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def tiny_feature_model(features: int, classes: int, seed: int, kernel="glorot_uniform") -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), dtype="float32", name="features")
    dense = keras.layers.Dense(classes, activation="softmax", kernel_initializer=kernel)
    return keras.Model(inputs, dense(inputs))


def export(
    model: keras.Model, root: Path, name: str, input_spec: dict, labels: list[str], predict=None
) -> Path:
    """Export `model` (or `predict`, a function of the input batch using it) as the next version."""
    metadata = {
        "labels": labels,
        "metrics": {"test": {"accuracy": 0.5, "examples": 10}},
        "training": {"command": "pytest tests/conftest.py", "seed": 0},
    }
    predict = predict or (lambda x: model(x, training=False))
    return export_model(model, predict, root, name, input_spec, metadata)


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


def offline(version_dir: Path, batch: np.ndarray) -> np.ndarray:
    """The export's own signature, called directly: what HTTP must reproduce."""
    loaded = tf.saved_model.load(str(version_dir))
    name = "image" if batch.dtype == np.uint8 else "features"
    return loaded.signatures["serving_default"](**{name: tf.constant(batch)})["probabilities"].numpy()


def wait_for(condition, timeout: float = 30, interval: float = 0.05):
    """Poll `condition` until it returns something true, which is returned; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {condition}"
        time.sleep(interval)
    return result


def service_settings(model_dir: Path, **overrides) -> Settings:
    """Settings for a test app: one worker, as an app in the test's process is. Small batches
    keep the tests fast; hot reload is off unless asked for, and so is gRPC, whose default port
    every app would share. Requests that state no deadline wait as long as a test holds the
    model (tests/test_service_deadlines.py sets its own). (The environment is cleared of service
    settings for the whole session: see conftest.)"""
    defaults = {
        "model_dir": model_dir,
        "poll_interval_s": 0,
        "max_batch_size": 16,
        "workers": 1,
        "request_timeout_s": 600,
    }
    return Settings(**{**defaults, "grpc_port": 0, **overrides})


def wait_ready(client: TestClient, timeout: float = 60) -> dict:
    return wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json(), timeout)


@contextlib.contextmanager
def serving(model_dir: Path, ready: bool = True, **overrides):
    """A TestClient of an app over `model_dir`, its lifespan running; ready unless told not to wait.
    Server errors come back as responses (500), as a real client would see them."""
    app = create_app(service_settings(model_dir, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


@contextlib.contextmanager
def serving_both_doors(model_dir: Path, **overrides):
    """`serving`, with the app's gRPC server on a free port: (client, a channel to it)."""
    port = free_port()
    with (
        serving(model_dir, grpc_port=port, **overrides) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield client, channel


def samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(all_samples, name, **labels) -> float:
    """The sample's value; a series that is missing fails rather than reading as 0."""
    key = (name, tuple(sorted(labels.items())))
    assert key in all_samples, f"no series {name}{labels}"
    return all_samples[key]


HELD_ROWS = 3  # a call with this many rows waits for the gate; warm-up sizes (1, 8, 16) do not


def held_feature_model(root: Path, gate: Path) -> Path:
    """An iris-shaped export whose model call, for a batch of exactly HELD_ROWS rows, waits in
    the server's model thread until the file `gate` exists (`open_gate`): a model call held for
    as long as a test needs it. (It polls the folder meanwhile, which keeps one core busy: hold
    calls for seconds, not minutes.)"""
    model = tiny_feature_model(4, 3, seed=6)

    def predict(x):
        probabilities = model(x, training=False)
        # The pattern is computed from the input, or TensorFlow would evaluate the search once,
        # while it optimizes the graph (constant folding).
        pattern = tf.strings.regex_replace(tf.strings.as_string(tf.shape(x)[0]), "^.*$", str(gate))

        def after_the_gate():
            still_closed = lambda n: tf.equal(tf.size(tf.io.matching_files(pattern)), 0)  # noqa: E731
            waited = tf.while_loop(still_closed, lambda n: n + 1, [tf.constant(0)])
            return probabilities + 0.0 * tf.cast(waited, tf.float32)

        return tf.cond(tf.shape(x)[0] == HELD_ROWS, after_the_gate, lambda: probabilities)

    return export(model, root, "held", IRIS_SPEC, IRIS_LABELS, predict)


def open_gate(gate: Path) -> None:
    """Let every held call through, now and later."""
    gate.touch()


JPEG = {"quality": 75, "chroma_subsampled": True}  # the training images' compression, as in data.py


def jpeg_image_model(root: Path, seed: int) -> Path:
    """A tiny image model with the real CNN's in-graph JPEG round trip, exported. Its convolution
    is wide enough for the converter to make its weights int8 (1,024 of them at least), and its
    last layer sharpened so that answers have margins like a trained network's."""
    from training import cifar10
    from training.data import CIFAR10_LABELS

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(48, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(10, activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([w * 40 for w in dense.get_weights()])

    def predict(x):
        return model(cifar10.jpeg_round_trip(x, JPEG["quality"], JPEG["chroma_subsampled"]), training=False)

    return export(model, root, "cifar10", {**IMAGE_SPEC, "jpeg_round_trip": JPEG}, CIFAR10_LABELS, predict)


def self_labelled_photos(version_dir: Path, count: int = 200):
    """A dataset of `count` photo-like images labelled by the export itself (its accuracy: 1)."""
    from payloads import photo

    from training.data import CIFAR10_LABELS, Dataset, Split

    images = np.stack([np.asarray(photo(i)) for i in range(count)])
    split = Split(images, offline(version_dir, images).argmax(1))
    return Dataset(CIFAR10_LABELS, split, split, None, "photos", JPEG)


def fast_export(root: Path, seed: int = 6) -> Path:
    """`jpeg_image_model` with its TFLite int8 form added by `training.fastpath`."""
    from training import fastpath

    path = jpeg_image_model(root, seed)
    fastpath.add_fast_form(path, self_labelled_photos(path), "pytest tests/deployments.py")
    return path
