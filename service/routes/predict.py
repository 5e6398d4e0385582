"""Prediction endpoints: images as multipart uploads, feature vectors as JSON. Thin: the body is
read here and handed to the data plane (`service.dataplane`), which checks, batches and labels."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from service import jsonbody
from service.dataplane import Classified, DataPlane, Served
from service.deps import DataPlaneDep, require_json
from service.faults import UnfitInput
from service.images import encode_png
from service.predictor import Predictor
from service.protocols.openapi import inline
from service.registry import UnknownModel
from service.responses import JSONResponse
from service.schemas import (
    Error,
    FeaturesRequest,
    Instances,
    LabelProbability,
    OneInstance,
    Prediction,
    Predictions,
)
from service.uploads import read_files

router = APIRouter(prefix="/predict", tags=["predict"])
FEATURES: TypeAdapter[OneInstance | Instances | dict[str, float]] = TypeAdapter(FeaturesRequest)
FEATURES_SCHEMA = inline(FEATURES.json_schema())

TopK = Annotated[int | None, Query(ge=1, description="also list the k most probable classes")]
AbstainThreshold = Annotated[
    float | None,
    Query(
        allow_inf_nan=False,
        description="models with an `ood_score`: abstain above this score instead of the model's "
        "declared threshold (lower abstains more)",
    ),
]
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
    status: {"model": Error} for status in (400, 401, 404, 408, 413, 415, 422, 503, 504)
}
# Every prediction route answers one prediction or several.
ANSWERS: dict[str, Any] = {
    "response_model": Prediction | Predictions,
    "response_model_exclude_none": True,
    "responses": ERRORS,
}


def _of_kind(served: Served, kind: str) -> Served:
    name = served.predictor.name
    if served.predictor.kind != kind:
        raise UnknownModel(
            f"model {name!r} takes features, not images: POST JSON to /predict/{name}"
            if kind == "image"
            else f"model {name!r} takes images, not features: POST multipart/form-data "
            f"to /predict/image/{name}"
        )
    return served


async def vector_model(model: str, plane: DataPlaneDep) -> Served:
    return _of_kind(plane.live(model), "vector")


# The image routes read the app's state themselves rather than through dependencies: FastAPI
# solves each dependency anew per request, a large share of the event loop's Python time under
# load (py-spy profile, 32 users) before this change.


@router.post("/image", openapi_extra=IMAGE_UPLOAD, **ANSWERS)
async def predict_image(
    request: Request, top_k: TopK = None, preview: Preview = False, abstain_threshold: AbstainThreshold = None
) -> JSONResponse:
    """Classify uploaded images with the image model (the first by name if several are served)."""
    plane: DataPlane = request.app.state.dataplane
    return await _classify_images(request, plane, plane.image_model(), top_k, preview, abstain_threshold)


@router.post("/image/{model}", openapi_extra=IMAGE_UPLOAD, **ANSWERS)
async def predict_image_with(
    request: Request,
    model: str,
    top_k: TopK = None,
    preview: Preview = False,
    abstain_threshold: AbstainThreshold = None,
) -> JSONResponse:
    """Classify uploaded images with the image model called `model`."""
    plane: DataPlane = request.app.state.dataplane
    served = _of_kind(plane.live(model), "image")
    return await _classify_images(request, plane, served, top_k, preview, abstain_threshold)


# Documented from the schema, since the route reads its body itself (below).
FEATURES_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": FEATURES_SCHEMA}}}
}


@router.post("/{model}", dependencies=[Depends(require_json)], openapi_extra=FEATURES_BODY, **ANSWERS)
async def predict_features(
    request: Request,
    served: Annotated[Served, Depends(vector_model)],
    plane: DataPlaneDep,
    top_k: TopK = None,
) -> JSONResponse:
    """Classify feature vectors: `{"features": [...]}` or features by name answer one
    prediction; `{"instances": [[...], ...]}` answers `{"predictions": [...]}` in order."""
    # Read here rather than as a body parameter, which FastAPI would read and parse before any
    # dependency runs: the API key, the media type and the model come first, then at most the
    # model's JSON cap is read (as v2 and TF Serving do), parsed on a thread.
    body = await jsonbody.read_capped(request, jsonbody.json_cap(served.predictor, plane.max_rows))
    parsed = await asyncio.to_thread(parse_features, body)
    classified = await plane.classify(served, _feature_rows(parsed, served.predictor))
    predictions = _predictions(served.predictor, classified, top_k)
    return _answer(Predictions(predictions=predictions) if isinstance(parsed, Instances) else predictions[0])


def parse_features(body: bytes) -> OneInstance | Instances | dict[str, float]:
    """The body as a features request; the errors FastAPI would report for a body parameter
    of that type (answered by service.errors as a 422)."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        invalid = {"type": "json_invalid", "loc": ("body", error.pos), "msg": "JSON decode error"}
        raise RequestValidationError([{**invalid, "ctx": {"error": error.msg}}]) from None
    except (UnicodeDecodeError, RecursionError):  # FastAPI's answer for these
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return FEATURES.validate_python(data)
    except ValidationError as error:
        errors = error.errors(include_input=False, include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def _classify_images(
    request: Request,
    plane: DataPlane,
    served: Served,
    top_k: int | None,
    preview: bool,
    abstain_threshold: float | None,
) -> JSONResponse:
    with plane.expecting(served):
        files = await read_files(request, "file", plane.max_rows)
        rows = await plane.decode_files(served, files)
    classified = await plane.classify(served, rows, abstain_threshold)
    predictions = _predictions(served.predictor, classified, top_k)
    if preview:  # encoded from the very array the model was given
        for prediction, pixels in zip(predictions, classified.rows, strict=True):
            prediction.input_png = encode_png(pixels)
    return _answer(predictions[0] if len(predictions) == 1 else Predictions(predictions=predictions))


def _feature_rows(body, predictor: Predictor) -> np.ndarray:
    """The request's examples as rows of the model's features; the data plane checks the rest."""
    width, names = predictor.input_shape[0], predictor.feature_names
    expected = f"{width} features" + (f" ({', '.join(names)})" if names else "")
    if isinstance(body, OneInstance):
        rows = [body.features]
    elif isinstance(body, Instances):
        rows = body.instances
    else:
        given = set(body)
        if names is None or given != set(names):
            raise UnfitInput(
                f'expected {expected} by name or as {{"features": [...]}}; '
                f"got {', '.join(sorted(given)) or 'none'}"
            )
        rows = [[body[name] for name in names]]
    if len({len(row) for row in rows}) > 1:  # ragged: name the first odd one (even: the data plane's)
        number, row = next((n, row) for n, row in enumerate(rows, 1) if len(row) != width)
        raise UnfitInput(f"instance {number} has {len(row)} features; expected {expected}")
    with np.errstate(over="ignore"):  # too large for float32 becomes inf, which is refused
        return np.asarray(rows, predictor.input_dtype)


def _predictions(predictor: Predictor, classified: Classified, top_k: int | None) -> list[Prediction]:
    labels, version = predictor.labels, str(predictor.version)
    predictions = []
    rows = zip(classified.probabilities.tolist(), classified.best, strict=True)
    scores = classified.ood_score.tolist() if classified.ood_score is not None else None
    abstain = classified.abstain
    for row, (values, best) in enumerate(rows):
        ranked = classified.ranking(row, top_k) if top_k else None
        top = [LabelProbability(label=labels[i], probability=values[i]) for i in ranked] if ranked else None
        predictions.append(
            Prediction(
                model=predictor.name,
                version=version,
                label=labels[best],
                probabilities=dict(zip(labels, values, strict=True)),
                top_k=top,
                ood_score=scores[row] if scores is not None else None,
                abstain=abstain[row] if abstain is not None else None,
            )
        )
    return predictions


def _answer(answer: BaseModel) -> JSONResponse:
    """The answer serialized directly, as FastAPI's own fast path does, without validating what
    was just built."""
    return JSONResponse(answer.model_dump_json(exclude_none=True).encode())
