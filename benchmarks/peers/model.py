"""What every peer server runs per batch: the same decode and the same SavedModel signature (or,
with PEERS_RUNTIME, the export's fast form that the service serves on CPUs by default).

Imported inside each peer's own venv (the repository root on PYTHONPATH), so it needs only
TensorFlow, Pillow and numpy. The upload is decoded by the service's own `decode_image` when
it imports, so that peers and service spend the same CPU per pixel; with PEERS_DECODE=pillow
(or when it does not import) by what a user of a peer would write: Pillow, draft mode for
large JPEGs, RGB, Lanczos. The first makes the contest about serving alone, and hands any speed-up
of the service's decoding to the peers too; the second compares whole products.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (32, 32)
MAX_PIXELS = 50_000_000  # the service's default MAX_IMAGE_PIXELS

_service_decode = None
if os.environ.get("PEERS_DECODE", "service") == "service":
    with contextlib.suppress(ImportError):  # the service's modules moved: plain Pillow below
        from service.images import decode_image as _service_decode


def decode(data: bytes) -> np.ndarray:
    """An uploaded image as [32, 32, 3] uint8 RGB."""
    if _service_decode is not None:
        return _service_decode(data, SIZE, MAX_PIXELS)
    return pillow_decode(data)


def pillow_decode(data: bytes) -> np.ndarray:
    """Pillow's plain path; draft mode lets libjpeg decode a large JPEG at 1/2 to 1/8 scale."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (3 * SIZE[0], 3 * SIZE[1]))
        return np.asarray(image.convert("RGB").resize(SIZE, Image.Resampling.LANCZOS))


def version_dir() -> Path:
    """MODEL_VERSION_DIR, as the harness sets it: models/cifar10/<newest>."""
    return Path(os.environ["MODEL_VERSION_DIR"])


class Classifier:
    """The SavedModel's serving signature and its labels, loaded once per process."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or version_dir()
        self.labels = json.loads((folder / "assets.extra" / "metadata.json").read_text())["labels"]
        if runtime := os.environ.get("PEERS_RUNTIME"):
            # The export's fast form, run by the service's own runtime (its JPEG round trip in
            # Pillow, an interpreter per thread), so peer and service compute alike.
            from model_repository import read_metadata
            from service.runtimes import TFLiteRuntime

            contract = read_metadata(folder)
            fast = TFLiteRuntime(runtime, folder, contract.runtimes[runtime], contract)
            self.probabilities = lambda images: fast.run(images)["probabilities"]  # type: ignore[method-assign]
            return
        import tensorflow as tf  # late: a peer's HTTP front may not need it

        self.signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        self._tf = tf

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """[N, 32, 32, 3] uint8 → [N, classes] float32."""
        return self.signature(image=self._tf.constant(images))["probabilities"].numpy()

    def answers(self, images: np.ndarray) -> list[dict]:
        """One JSON-ready answer per image, shaped like the service's (`label`, `probabilities`)."""
        return [self.answer(row) for row in self.probabilities(images)]

    def answer(self, row: np.ndarray) -> dict:
        return {
            "label": self.labels[int(row.argmax())],
            "probabilities": dict(zip(self.labels, map(float, row), strict=True)),
        }
