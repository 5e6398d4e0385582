"""Export a trained model in TF Serving's layout: `<base>/<name>/<version>/`.

The export is the model contract, written once. It holds

* `saved_model.pb` + `variables/`: signature `serving_default`, one raw input (`image` uint8
  [N, 32, 32, 3] RGB, or `features` float32 [N, 4]) → `probabilities` float32 [N, C];
* `assets.extra/metadata.json`: name, version, class labels in output order, input and output
  spec, metrics, how it was trained (command, data, seed, TensorFlow version, date), its
  calibration (temperature, before/after metrics) and where its model card is;
* `assets.extra/` reports: metrics JSON, plots and `MODEL_CARD.md` (`training.reports`,
  `training.model_card`).

`probabilities` are calibrated inside the graph (`training.calibration`), so every client,
TF Serving included, gets the same calibrated numbers.

A version is written under a hidden temporary name and renamed into place, so a server
watching the folder never sees half an export, and an existing version is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf

# The layout and the metadata file live in `model_repository`, which the service reads without
# Keras; re-exported here for callers of `training.export`.
from model_repository import (
    METADATA,
    existing_versions,
    load_metadata,
    next_version,
    staging_dir,
    write_metadata,
)
from training.calibration import temperature_scaled

__all__ = ["METADATA", "existing_versions", "export_model", "load_metadata", "next_version"]


def export_model(
    model: keras.Model | tf.Module,
    predict,
    base_dir: str | Path,
    name: str,
    input_spec: dict,
    metadata: dict,
    reports=None,
    temperature: float | None = None,
) -> Path:
    """Write `predict` (a function of one raw input batch returning probabilities, or a dict of
    them under "probabilities" and further outputs) as the `serving_default` signature of the
    next version of `name`; returns the version folder.

    `model`: what holds `predict`'s variables (a Keras model, or a loaded SavedModel).
    `input_spec`: {"name", "shape" (without batch), "dtype", optionally "feature_names"}.
    `reports(folder)`, if given, writes extra files into `assets.extra/` before publishing.
    `temperature`, if given, calibrates the served probabilities: softmax(log(p) / temperature).
    """
    model_dir = Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    staging = staging_dir(model_dir, version, os.getpid())
    shutil.rmtree(staging, ignore_errors=True)

    signature = tf.TensorSpec([None, *input_spec["shape"]], input_spec["dtype"], name=input_spec["name"])
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(x):
        # `predict` answers the probabilities, or them and further outputs by name (an
        # out-of-distribution score), computed in one pass of the network.
        outputs = predict(x)
        outputs = dict(outputs) if isinstance(outputs, dict) else {"probabilities": outputs}
        if temperature is not None:
            outputs["probabilities"] = temperature_scaled(outputs["probabilities"], temperature)
        return outputs

    archive.add_endpoint("serving_default", serve, [signature])
    archive.write_out(str(staging), verbose=False)

    full = {
        "name": name,
        "version": str(version),
        **metadata,
        "signature": "serving_default",
        "input": {**input_spec, "shape": [None, *input_spec["shape"]]},
        "output": {"name": "probabilities", "shape": [None, len(metadata["labels"])], "dtype": "float32"},
    }
    write_metadata(staging, full)
    if reports is not None:
        reports(staging / METADATA.parent)

    target = model_dir / str(version)
    staging.rename(target)  # fails rather than overwrite if another run took this version
    return target


class NotAProbabilityExport(ValueError):
    """An export whose `serving_default` signature does not return `probabilities`."""


def load_serving_function(version_dir: str | Path):
    """The loaded SavedModel and a function of one raw input batch returning its `probabilities`;
    NotAProbabilityExport if its serving signature has no such output."""
    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise NotAProbabilityExport(f"{version_dir}: no serving_default signature")
    outputs = signature.structured_outputs
    if "probabilities" not in outputs:
        raise NotAProbabilityExport(
            f"{version_dir}: serving_default returns {sorted(outputs)}, not probabilities; "
            "temperature scaling needs class probabilities"
        )
    inputs = list(signature.structured_input_signature[1])
    if len(inputs) != 1:
        raise NotAProbabilityExport(f"{version_dir}: serving_default takes {inputs}, not one input")
    input_name = inputs[0]
    return loaded, lambda x: signature(**{input_name: x})["probabilities"]
