"""Prediction endpoints: images as multipart uploads, feature vectors as JSON."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, cast

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request

from service.deps import RegistryDep, SettingsDep, require_json
from service.images import ImageRejected, decode_image, encode_png
from service.predictor import Predictor
from service.registry import ServedModel, UnknownModel
from service.resizing import NotBuiltYet
from service.schemas import (
    Error,
    FeaturesRequest,
    Instances,
    LabelProbability,
    OneInstance,
    Prediction,
    Predictions,
)
from service.settings import Settings
from service.uploads import read_files

router = APIRouter(prefix="/predict", tags=["predict"])

INLINE_DECODE_BYTES = 16 * 1024  # a 96x96 PNG or a 224x224 JPEG; see decode_all
TopK = Annotated[int | None, Query(ge=1, description="also list the k most probable classes")]
Preview = Annotated[
    bool,
    Query(description="also return each image as the model received it (`input_png`, base64 PNG)"),
]


IMAGE_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": (
                                "JPEG, PNG, GIF, BMP, WebP or TIFF;"
                                " several `file` parts are answered in order"
                            ),
                        }
                    },
                }
            }
        },
    }
}
# Documented so clients (and Schemathesis) know every answer's shape.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error} for status in (400, 401, 404, 408, 413, 415, 422, 503)
}


def _of_kind(served: ServedModel, kind: str) -> ServedModel:
    name = served.name
    if cast(Predictor, served.predictor).kind != kind:  # registry.get: a live version
        raise UnknownModel(
            f"model {name!r} takes features, not images: POST JSON to /predict/{name}"
            if kind == "image"
            else f"model {name!r} takes images, not features: POST multipart/form-data "
            f"to /predict/image/{name}"
        )
    return served


async def vector_model(model: str, registry: RegistryDep) -> ServedModel:
    return _of_kind(registry.get(model), "vector")


# The image routes read the app's state themselves rather than through dependencies: FastAPI
# solves each dependency anew per request, a large share of the event loop's Python time under
# load (py-spy profile, 32 users) before this change.


@router.post(
    "/image",
    response_model=Prediction | Predictions,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=IMAGE_UPLOAD,
)
async def predict_image(request: Request, top_k: TopK = None, preview: Preview = False):
    """Classify uploaded images with the image model (the first by name if several are served)."""
    return await _classify_images(request, request.app.state.registry.image_model(), top_k, preview)


@router.post(
    "/image/{model}",
    response_model=Prediction | Predictions,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=IMAGE_UPLOAD,
)
async def predict_image_with(request: Request, model: str, top_k: TopK = None, preview: Preview = False):
    """Classify uploaded images with the image model called `model`."""
    served = _of_kind(request.app.state.registry.get(model), "image")
    return await _classify_images(request, served, top_k, preview)


@router.post(
    "/{model}",
    response_model=Prediction | Predictions,
    response_model_exclude_none=True,
    responses=ERRORS,
    dependencies=[Depends(require_json)],
)
async def predict_features(
    body: FeaturesRequest,
    served: Annotated[ServedModel, Depends(vector_model)],
    settings: SettingsDep,
    top_k: TopK = None,
):
    """Classify feature vectors: `{"features": [...]}` or features by name answer one
    prediction; `{"instances": [[...], ...]}` answers `{"predictions": [...]}` in order."""
    predictor = cast(Predictor, served.predictor)  # registry.get: a live version
    rows = _feature_rows(body, predictor, settings.max_batch_size)
    predictions = _predictions(predictor, await served.live_batcher.predict(rows, predictor), top_k)
    return Predictions(predictions=predictions) if isinstance(body, Instances) else predictions[0]


async def _classify_images(request: Request, served: ServedModel, top_k: int | None, preview: bool):
    # This request is served by this version, even across a swap; a live one (registry.get).
    predictor = cast(Predictor, served.predictor)
    settings: Settings = request.app.state.settings
    decode = image_decoder(predictor, request)
    with served.live_batcher.expecting():
        files = await read_files(request, "file", settings.max_batch_size)
        images = await decode_all(files, decode, request.app.state.decoders)
    for number, image in enumerate(images, 1):
        if isinstance(image, ImageRejected) and len(images) > 1:
            raise type(image)(f"file {number}: {image}")
        if isinstance(image, BaseException):
            raise image
    batch = np.stack(images)
    predictions = _predictions(predictor, await served.live_batcher.predict(batch, predictor), top_k)
    if preview:  # encoded from the very array the model was given
        for prediction, pixels in zip(predictions, batch, strict=True):
            prediction.input_png = encode_png(pixels)
    return predictions[0] if len(predictions) == 1 else Predictions(predictions=predictions)


def image_decoder(predictor: Predictor, request: Request):
    """decode_image for `predictor`'s input size under the service's limits and this request's
    share of the worker's decode budget: file bytes → rows."""
    settings: Settings = request.app.state.settings
    return functools.partial(
        decode_image,
        size=predictor.image_size,
        max_pixels=settings.max_image_pixels,
        budget=request.app.state.decode_budget.for_request(),
        undo_enlargements=settings.undo_enlargements,
    )


async def decode_all(files: Sequence[bytes | bytearray], decode, decoders: ThreadPoolExecutor) -> list:
    """Each file's pixels, or the exception decoding it raised. A single small file is decoded
    right here: that takes less than handing it to a decoder thread and back (unless resizing it
    needs matrices not built yet); anything larger goes to the decoder threads, where Pillow's
    decoding runs beside the event loop."""
    if len(files) == 1 and len(files[0]) <= INLINE_DECODE_BYTES:
        try:
            return [decode(files[0], build=False)]
        except NotBuiltYet:
            pass  # its resizing matrices take milliseconds to build: not on the event loop
        except Exception as error:
            return [error]
    loop = asyncio.get_running_loop()
    return await asyncio.gather(
        *(loop.run_in_executor(decoders, decode, f) for f in files), return_exceptions=True
    )


def _feature_rows(body, predictor: Predictor, max_rows: int) -> np.ndarray:
    width, names = predictor.input_shape[0], predictor.feature_names
    expected = f"{width} features" + (f" ({', '.join(names)})" if names else "")
    if isinstance(body, OneInstance):
        rows = [body.features]
    elif isinstance(body, Instances):
        rows = body.instances
    else:
        given = set(body)
        if names is None or given != set(names):
            raise HTTPException(
                422,
                f'expected {expected} by name or as {{"features": [...]}}; '
                f"got {', '.join(sorted(given)) or 'none'}",
            )
        rows = [[body[name] for name in names]]
    if len(rows) > max_rows:
        raise HTTPException(422, f"{len(rows)} instances; at most {max_rows} per request")
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise HTTPException(422, f"instance {number} has {len(row)} features; expected {expected}")
    with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused just below
        batch = np.asarray(rows, predictor.input_dtype)
    if not np.isfinite(batch).all():
        limit = np.finfo(predictor.input_dtype).max
        raise HTTPException(422, f"features must be finite as {predictor.input_dtype} (|x| <= {limit:.3g})")
    return batch


def _predictions(predictor: Predictor, probabilities: np.ndarray, top_k: int | None) -> list[Prediction]:
    if not np.isfinite(probabilities).all():
        # Extreme (if finite) features can overflow inside the model; that is the input's doing.
        raise HTTPException(422, "the model's output is not finite for these inputs")
    labels, version = predictor.labels, str(predictor.version)
    predictions = []
    for row in probabilities:
        values = row.tolist()
        best = np.argsort(-row, kind="stable")
        top = (
            [LabelProbability(label=labels[i], probability=values[i]) for i in best[:top_k]]
            if top_k
            else None
        )
        predictions.append(
            Prediction(
                model=predictor.name,
                version=version,
                label=labels[best[0]],
                probabilities=dict(zip(labels, values, strict=True)),
                top_k=top,
            )
        )
    return predictions
