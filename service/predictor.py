"""One exported model version, loaded: what its metadata promises and its serving signature.

Everything model-specific (labels, input name, shape and dtype, feature names) comes from
`assets.extra/metadata.json` (read and checked by `model_repository`, written by
`training.export`); nothing is declared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from model_repository import METADATA, Metadata, MetadataError, read_metadata
from service.runtimes import AUTO, SavedModelRuntime, TFLiteRuntime, load_runtime


class ModelError(Exception):
    """An export that cannot be served: unreadable, inconsistent with its metadata, or broken."""


class Predictor:
    """A model version ready to call on whole batches of raw inputs (uint8 RGB pixels or
    float32 features); normalization is inside the exported graph."""

    def __init__(
        self, version_dir: Path, device: str, runtime: str = AUTO, threads: int = 1, tta: str = "none"
    ):
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
        # The SavedModel, or a faster form of it the export declares (MODEL_RUNTIME: service/runtimes.py).
        self.runtime: SavedModelRuntime | TFLiteRuntime = load_runtime(
            version_dir, checked, device, runtime, threads
        )
        # Flip test-time augmentation (TTA=flip): each image and its mirror, outputs averaged.
        if tta not in ("none", "flip"):
            raise ModelError(f"unknown test-time augmentation {tta!r}")
        self.tta = tta if self.kind == "image" else "none"

    @property
    def runtime_name(self) -> str:
        """Which runtime answers: "savedmodel", or the name of the export's fast form."""
        return self.runtime.name

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height), as Pillow counts them."""
        height, width, _ = self.input_shape
        return width, height

    def predict(self, batch: np.ndarray, warming_up: bool = False) -> dict[str, np.ndarray]:
        """The declared outputs by name, from whichever runtime serves: class probabilities,
        [len(batch), len(labels)] float32 in label order, and the out-of-distribution score
        [len(batch)] where the model has one. `warming_up`: off the model's thread, where a fast
        runtime uses interpreters it then drops (one never passes from one thread to another:
        service/runtimes.py)."""
        run = getattr(self.runtime, "warm_up", self.runtime.run) if warming_up else self.runtime.run
        if self.tta == "none":
            found = run(batch)
        else:
            both = run(np.concatenate([batch, batch[:, :, ::-1]]))
            found = {name: (values[: len(batch)] + values[len(batch) :]) / 2 for name, values in both.items()}
        return {name: found[name] for name in self.output_names}

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run dummy batches so the first requests do not pay for graph and kernel set-up, and
        check the outputs are what the metadata promises."""
        for size in batch_sizes:
            outputs = self.predict(np.zeros((size, *self.input_shape), self.input_dtype), warming_up=True)
            probabilities = outputs[self.output_name]
            if self.ood and (shape := outputs[self.ood.output].shape) != (size,):
                raise ModelError(f"{self.ood.output} shape {shape}, expected ({size},)")
            if probabilities.shape != (size, len(self.labels)):
                raise ModelError(f"output shape {probabilities.shape}, expected ({size}, {len(self.labels)})")
            if not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3):
                raise ModelError("outputs are not probabilities (rows do not sum to 1)")


def load_predictor(
    version_dir: Path,
    device: str,
    warm_up_sizes: list[int],
    runtime: str = AUTO,
    threads: int = 1,
    tta: str = "none",
) -> Predictor:
    """Load and warm up one version, or raise ModelError saying why it cannot be served."""
    try:
        predictor = Predictor(version_dir, device, runtime, threads, tta)
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
