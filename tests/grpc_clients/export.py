"""What every official gRPC client's checks compare against: the SavedModel's own outputs, on
the held-out photos (samples/) and the Iris flowers, and where the service under test listens.

Run in a process of its own per client library (tests/test_protocol_grpc.py starts them):
tritonclient's and kserve's generated `inference.*` modules cannot share one process."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_iris

from service.images import decode_image

ROOT = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("GRPC_TARGET", "127.0.0.1:8081")  # host:port of `python -m service`
MODELS = Path(os.environ.get("GRPC_MODEL_DIR", ROOT / "models"))
MAX_BATCH = int(os.environ.get("GRPC_MAX_BATCH", "64"))
TOLERANCE = 1e-4


def version_dir(name: str) -> Path:
    """The version the service serves by default: the newest."""
    return max((p for p in (MODELS / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def version(name: str) -> str:
    return version_dir(name).name


@functools.cache
def _export(name: str):
    folder = version_dir(name)
    metadata = json.loads((folder / "assets.extra" / "metadata.json").read_text())
    return tf.saved_model.load(str(folder)).signatures[metadata["signature"]], metadata


def export_outputs(name: str, rows: np.ndarray) -> np.ndarray:
    """The export's probabilities for `rows`, from its serving signature."""
    signature, metadata = _export(name)
    return signature(**{metadata["input"]["name"]: tf.constant(rows)})[metadata["output"]["name"]].numpy()


def labels(name: str) -> list[str]:
    return _export(name)[1]["labels"]


def photos() -> list[bytes]:
    return [path.read_bytes() for path in sorted((ROOT / "samples").glob("*.jpg"))]


def pixels(files: list[bytes], name: str = "cifar10") -> np.ndarray:
    """The files as the model's uint8 rows, decoded as the service decodes uploads."""
    height, width = _export(name)[1]["input"]["shape"][1:3]
    return np.stack([decode_image(f, size=(width, height), max_pixels=50_000_000) for f in files])


def flowers() -> np.ndarray:
    return load_iris().data.astype(np.float32)


def best_labels(name: str, probabilities: np.ndarray) -> list[str]:
    return [labels(name)[i] for i in np.argmax(probabilities, axis=1)]
