"""Bringing a decoded RGB image to the model's input size.

* At the model's size already: passed through untouched, bit for bit.
* Aspect: the whole frame is squashed to the model's size, never cropped. CIFAR-10 images are
  whole objects filling the frame; a centre crop would cut the ends off wide or tall objects,
  while squashing exactly inverts an upload rescaled from the model's size, evenly or not.
* Enlargements (a thumbnail blown up for display, a dataset upscaled for testing) are undone,
  not shrunk again. Any downscaling filter blurs: on CIFAR-10 images enlarged 2-8x with
  bicubic, the best of Pillow's (Lanczos) still left 1.8/255 mean error, which changed 13% of
  the answers of a CNN trained for one epoch (3 points of accuracy); the shipped model lost 2
  points on bilinear enlargements. Instead, for each of Pillow's interpolators (nearest,
  bilinear, bicubic, Lanczos) the model-sized image whose enlargement best matches the upload
  is solved for by least squares, a separable linear problem; when one explains the upload to
  within rounding (RMS residual about 0.4/255, about 1.2 after JPEG at quality 75), that is the
  original, recovered to about 0.05/255. Photos that are not enlargements leave residuals
  of 5 and more and take the next path. Tried for uploads up to MAX_ENLARGEMENT times the
  model size, unless turned off (`undo_enlargements=False`, setting UNDO_ENLARGEMENTS).
  The solve needs, per upload size, each interpolator's matrix and pseudo-inverse: built
  once, then cached. Building them costs milliseconds, so a caller on the event loop passes
  `build=False` and gets `NotBuiltYet` instead, to redo the work on a worker thread.
* Everything else: Lanczos, antialiased (Pillow widens its support with the scale factor), the
  least-error Pillow filter on the same measurements. `reducing_gap` first shrinks huge images
  by an integer factor with a cheap box filter, bounding the cost at no measurable loss.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from PIL import Image

MAX_ENLARGEMENT = 8
INTERPOLATORS = (
    Image.Resampling.NEAREST,
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
)
ENLARGEMENT_RESIDUAL = 2.0  # RMS, out of 255; see above
PROBES = 16  # rows and columns looked at before solving
REDUCING_GAP = 3.0
CACHED_MATRICES = 256  # (length, enlarged length, interpolator) entries, oldest dropped first


class NotBuiltYet(Exception):
    """Undoing this enlargement needs matrices not built yet (see `to_model_size`'s `build`)."""


def to_model_size(
    image: Image.Image, size: tuple[int, int], undo_enlargements: bool = True, build: bool = True
) -> np.ndarray:
    """`image` (RGB) as [height, width, 3] uint8 pixels at `size` = (width, height).

    `build=False`: raise NotBuiltYet rather than spend milliseconds building the matrices an
    enlargement of a new size needs (callers on the event loop)."""
    if image.size == size:
        return np.asarray(image)
    if undo_enlargements and all(
        target <= side <= MAX_ENLARGEMENT * target for side, target in zip(image.size, size, strict=True)
    ):
        if not build and not all(
            (length, enlarged, interpolator) in _matrices
            for length, enlarged in zip(size, image.size, strict=True)
            for interpolator in INTERPOLATORS
        ):
            raise NotBuiltYet(f"{image.size[0]}x{image.size[1]} to {size[0]}x{size[1]}")
        original = undo_enlargement(np.asarray(image), size)
        if original is not None:
            return original
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP))


def undo_enlargement(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """The `size` image that one of Pillow's interpolators enlarged into `pixels`, or None when
    no enlargement explains them."""
    height, width = pixels.shape[:2]
    enlarged = pixels.transpose(2, 0, 1).astype(np.float32)  # channels first: one matrix each
    # An enlargement's columns lie in the span of its row operator, and its rows in that of
    # its column operator: a few of each, from one channel, pick the interpolator cheaply and
    # turn photos away before the full solve.
    probe_columns = enlarged[1, :, :: max(1, width // PROBES)]
    probe_rows = enlarged[1, :: max(1, height // PROBES)]

    def misfit(interpolator) -> float:
        rows, rows_inverse = enlargement(size[1], height, interpolator)
        columns, columns_inverse = enlargement(size[0], width, interpolator)
        return max(
            _rms(rows @ (rows_inverse @ probe_columns) - probe_columns),
            _rms((probe_rows @ columns_inverse.T) @ columns.T - probe_rows),
        )

    misfits = {interpolator: misfit(interpolator) for interpolator in INTERPOLATORS}
    interpolator = min(misfits, key=misfits.__getitem__)
    if misfits[interpolator] > ENLARGEMENT_RESIDUAL:
        return None
    rows, rows_inverse = enlargement(size[1], height, interpolator)
    columns, columns_inverse = enlargement(size[0], width, interpolator)
    original = rows_inverse @ enlarged @ columns_inverse.T
    if _rms(rows @ original @ columns.T - enlarged) > ENLARGEMENT_RESIDUAL:
        return None
    return np.clip(np.rint(original), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _rms(values: np.ndarray) -> float:
    return math.sqrt(np.vdot(values, values) / values.size)  # np.mean's overhead showed in profiles


_matrices: dict[tuple[int, int, Image.Resampling], tuple[np.ndarray, np.ndarray]] = {}
_matrices_lock = threading.Lock()


def enlargement(length: int, enlarged: int, interpolator: Image.Resampling) -> tuple[np.ndarray, np.ndarray]:
    """The matrix of Pillow's 1-D enlargement from `length` to `enlarged` samples (each column
    the enlargement of one unit impulse, computed in floating point) and its pseudo-inverse;
    cached."""
    key = (length, enlarged, interpolator)
    cached = _matrices.get(key)
    if cached is None:
        cached = _build_enlargement(*key)
        with _matrices_lock:
            _matrices[key] = cached
            while len(_matrices) > CACHED_MATRICES:
                del _matrices[next(iter(_matrices))]
    return cached


def clear_cache() -> None:
    """Forget every built matrix (for measuring a cold upload size)."""
    with _matrices_lock:
        _matrices.clear()


def _build_enlargement(
    length: int, enlarged: int, interpolator: Image.Resampling
) -> tuple[np.ndarray, np.ndarray]:
    impulses = np.eye(length, dtype=np.float32)
    matrix = np.stack(
        [
            np.asarray(Image.fromarray(impulse[None]).resize((enlarged, 1), interpolator))[0]
            for impulse in impulses
        ],
        axis=1,
    )
    return matrix, np.linalg.pinv(matrix).astype(np.float32)
