"""The naive way to serve the same models, to measure the service against.

What a first FastAPI tutorial does: an `async def` route reads the upload, Pillow converts and
resizes it, and Keras `model.predict()` runs on a batch of one, per request. The SavedModel is
wrapped with `keras.layers.TFSMLayer` so that `predict()` works on it. Nothing is batched
across requests, and `predict()` blocks the event loop while it runs, so requests are served
one at a time; each `predict()` call also pays Keras's per-call set-up (a data adapter and
an iterator for one example). The one concession: each model is called once at start-up,
so the first measured request does not pay for tracing.

    MODEL_DIR=models uvicorn benchmarks.baseline:app
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import keras
import numpy as np
from fastapi import FastAPI, UploadFile
from PIL import Image
from pydantic import BaseModel

from training.export import existing_versions, load_metadata


def load(model_dir: Path, name: str) -> tuple[keras.Model, dict]:
    version_dir = model_dir / name / str(existing_versions(model_dir / name)[-1])
    metadata = load_metadata(version_dir)
    spec = metadata["input"]
    inputs = keras.Input(spec["shape"][1:], dtype=spec["dtype"], name=spec["name"])
    outputs = keras.layers.TFSMLayer(str(version_dir), call_endpoint="serving_default")(inputs)
    model = keras.Model(inputs, outputs["probabilities"])
    model.predict(np.zeros([1, *spec["shape"][1:]], spec["dtype"]), verbose=0)
    return model, metadata


MODEL_DIR = Path(os.environ.get("MODEL_DIR", "models"))
image_model, image_metadata = load(MODEL_DIR, "cifar10")
iris_model, iris_metadata = load(MODEL_DIR, "iris")

app = FastAPI(title="Naive baseline")


def prediction(metadata: dict, probabilities: np.ndarray) -> dict:
    labels = metadata["labels"]
    return {
        "model": metadata["name"],
        "version": metadata["version"],
        "label": labels[int(probabilities.argmax())],
        "probabilities": dict(zip(labels, probabilities.tolist(), strict=True)),
    }


@app.post("/predict/image")
async def predict_image(file: UploadFile) -> dict:
    image = Image.open(io.BytesIO(await file.read())).convert("RGB").resize((32, 32))
    probabilities = image_model.predict(np.asarray(image)[None], verbose=0)[0]
    return prediction(image_metadata, probabilities)


class IrisRequest(BaseModel):
    features: list[float] | None = None
    instances: list[list[float]] | None = None


@app.post("/predict/iris")
async def predict_iris(request: IrisRequest) -> dict:
    rows = request.instances or [request.features]
    probabilities = iris_model.predict(np.asarray(rows, np.float32), verbose=0)
    if request.instances is None:
        return prediction(iris_metadata, probabilities[0])
    return {"predictions": [prediction(iris_metadata, p) for p in probabilities]}


@app.get("/readyz")
async def readyz() -> dict:
    return {"status": "ready"}
