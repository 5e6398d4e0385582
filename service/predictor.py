"""One exported model version, loaded: what its metadata promises and its serving signature.

Everything model-specific (labels, input name, shape and dtype, feature names) comes from
`assets.extra/metadata.json` (read and checked by `model_repository`, written by
`training.export`); nothing is declared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import tensorflow as tf

from model_repository import METADATA, Metadata, MetadataError, read_metadata


class ModelError(Exception):
    """An export that cannot be served: unreadable, inconsistent with its metadata, or broken."""


class Predictor:
    """A model version ready to call on whole batches of raw inputs (uint8 RGB pixels or
    float32 features); normalization is inside the exported graph."""

    def __init__(self, version_dir: Path, device: str):
        self.name = version_dir.parent.name
        self.version = int(version_dir.name)  # the folder is authoritative, as in TF Serving
        self.device = device
        try:
            checked = read_metadata(version_dir)
        except MetadataError as error:
            raise ModelError(str(error)) from None
        self.contract: Metadata = checked
        # The files the export ships beside the graph (metadata, model card, figures).
        self.assets_dir: Path = version_dir / METADATA.parent
        self.labels: list[str] = checked.labels
        spec = checked.input
        self.input_name: str = spec.name
        self.input_shape: tuple[int, ...] = tuple(cast(list[int], spec.shape[1:]))  # fixed after the batch
        self.input_dtype = np.dtype(spec.dtype)
        self.kind = _input_kind(self.input_shape, self.input_dtype)
        self.feature_names: list[str] | None = spec.feature_names
        if self.feature_names is not None and len(self.feature_names) != self.input_shape[0]:
            raise ModelError(f"{len(self.feature_names)} feature names for {self.input_shape[0]} features")
        self.output_name: str = checked.output.name
        self.output_dtype = np.dtype(checked.output.dtype)
        # The out-of-distribution score, where the export declares one: a second output.
        self.ood = checked.ood
        self.output_names: list[str] = [self.output_name, *([self.ood.output] if self.ood else [])]
        with tf.device(device):
            self._loaded = tf.saved_model.load(str(version_dir))
        # The concrete signature function: no Keras predict() loop and no retracing at any batch
        # size. Batches are not padded to a few fixed sizes: a first call at a new size costs a
        # little more once (measured on the CIFAR-10 CNN), where padding would cost up to
        # twice the compute on every call.
        self._signature = self._loaded.signatures[checked.signature]

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height), as Pillow counts them."""
        height, width, _ = self.input_shape
        return width, height

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The declared outputs by name: class probabilities, [len(batch), len(labels)] float32 in
        label order, and the out-of-distribution score [len(batch)] where the model has one."""
        with tf.device(self.device):
            outputs = self._signature(**{self.input_name: tf.constant(batch, self.input_dtype)})
        return {name: outputs[name].numpy() for name in self.output_names}

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run dummy batches so the first requests do not pay for graph and kernel set-up, and
        check the outputs are what the metadata promises."""
        for size in batch_sizes:
            outputs = self.predict(np.zeros((size, *self.input_shape), self.input_dtype))
            probabilities = outputs[self.output_name]
            if self.ood and (shape := outputs[self.ood.output].shape) != (size,):
                raise ModelError(f"{self.ood.output} shape {shape}, expected ({size},)")
            if probabilities.shape != (size, len(self.labels)):
                raise ModelError(f"output shape {probabilities.shape}, expected ({size}, {len(self.labels)})")
            if not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3):
                raise ModelError("outputs are not probabilities (rows do not sum to 1)")


def load_predictor(version_dir: Path, device: str, warm_up_sizes: list[int]) -> Predictor:
    """Load and warm up one version, or raise ModelError saying why it cannot be served."""
    try:
        predictor = Predictor(version_dir, device)
        predictor.warm_up(warm_up_sizes)
    except ModelError:
        raise
    except Exception as error:  # a broken export fails in many ways: I/O, JSON, protobuf, graph
        raise ModelError(f"{type(error).__name__}: {error}") from error
    return predictor


def _input_kind(shape: tuple, dtype: np.dtype) -> str:
    if len(shape) == 3 and dtype == np.uint8 and shape[2] == 3 and all(isinstance(d, int) for d in shape):
        return "image"
    if len(shape) == 1 and dtype == np.float32 and isinstance(shape[0], int):
        return "vector"
    raise ModelError(
        f"unsupported input: shape [None, {', '.join(map(str, shape))}] of {dtype}; "
        "expected uint8 [None, H, W, 3] images or float32 [None, N] features"
    )
