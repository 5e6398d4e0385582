"""What every protocol's routes call: find the live model version, turn decoded tensors into
its input rows, and run them through the model's micro-batcher. Nothing here knows a wire
format; the same checks and the same image decoding as the service's own routes apply.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from fastapi import Request

from service.images import ImageRejected
from service.predictor import Predictor
from service.registry import ModelRegistry, ServedModel, UnknownModel
from service.routes.predict import decode_all, image_decoder
from service.settings import Settings


class BadInput(ValueError):
    """Tensors the model cannot take (shape, datatype, values, count): the client's mistake."""


class VersionNotLive(UnknownModel):
    """A version that is not the one being served."""


def live_model(
    registry: ModelRegistry, name: str, version: str | None = None
) -> tuple[ServedModel, Predictor]:
    """The model and the version serving it now; UnknownModel, VersionNotLive or ModelNotReady.
    The predictor is read once, so the whole request is served by one version, even across a swap."""
    served = registry.get(name)
    predictor = cast(Predictor, served.predictor)  # registry.get returns live models only
    if version is not None and version != str(predictor.version):
        raise VersionNotLive(
            f"model {name!r} has no live version {version!r}; version {predictor.version} is live"
        )
    return served, predictor


def encoded_input_name(predictor: Predictor) -> str:
    """An image model's second input: encoded image files (`image` -> `image_bytes`, the suffix
    TF Serving uses for binary strings)."""
    return f"{predictor.input_name}_bytes"


def output_name(predictor: Predictor) -> str:
    return predictor.metadata["output"]["name"]


def check_rows(rows: np.ndarray, predictor: Predictor, max_rows: int) -> np.ndarray:
    """`rows` as the model's input: [n, *input_shape] of its dtype, 1 <= n <= max_rows,
    features finite. Values are checked by the codecs; the shape and count here."""
    expected = (len(rows), *predictor.input_shape)
    if rows.ndim == 0 or rows.shape != expected:
        shape = ", ".join(map(str, predictor.input_shape))
        raise BadInput(f"input {predictor.input_name!r} must have shape [n, {shape}]; got {list(rows.shape)}")
    check_count(len(rows), max_rows)
    if rows.dtype != predictor.input_dtype:
        raise BadInput(f"input {predictor.input_name!r} must be {predictor.input_dtype}; got {rows.dtype}")
    if predictor.kind == "vector" and not np.isfinite(rows).all():
        raise BadInput(f"input {predictor.input_name!r} must be finite")
    return rows


def check_count(count: int, max_rows: int) -> None:
    if count < 1:
        raise BadInput("no instances to classify")
    if count > max_rows:
        raise BadInput(f"{count} instances; at most {max_rows} per request")


async def decode_images(request: Request, predictor: Predictor, files: list[bytes]) -> np.ndarray:
    """Encoded image files as model rows, decoded, oriented and resized exactly as /predict/image
    does (the same function, on the same decoder threads)."""
    settings: Settings = request.app.state.settings
    check_count(len(files), settings.max_batch_size)
    images = await decode_all(files, image_decoder(predictor, request), request.app.state.decoders)
    for number, image in enumerate(images, 1):
        if isinstance(image, ImageRejected):
            raise BadInput(f"image {number}: {image}" if len(images) > 1 else str(image))
        if isinstance(image, BaseException):
            raise image
    return np.stack(images)


async def classify(served: ServedModel, predictor: Predictor, rows: np.ndarray) -> np.ndarray:
    """Class probabilities for `rows`, [n, len(labels)], batched with every other request."""
    probabilities = await served.live_batcher.predict(rows, predictor)
    if not np.isfinite(probabilities).all():
        # Extreme (if finite) features can overflow inside the model; that is the input's doing.
        raise BadInput("the model's output is not finite for these inputs")
    return probabilities


def labels_of(predictor: Predictor, probabilities: np.ndarray) -> list[str]:
    """The most probable class of each row; ties go to the first, as in /predict."""
    return [predictor.labels[i] for i in np.argmax(probabilities, axis=1)]
