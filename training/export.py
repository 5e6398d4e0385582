"""Export a trained model in TF Serving's layout: `<base>/<name>/<version>/`.

The export is the model contract, written once. It holds

* `saved_model.pb` + `variables/`: signature `serving_default`, one raw input (`image` uint8
  [N, 32, 32, 3] RGB, or `features` float32 [N, 4]) → `probabilities` float32 [N, C];
* `assets.extra/metadata.json`: name, version, class labels in output order, input and output
  spec, metrics, and how it was trained (command, data, seed, TensorFlow version, date);
* `assets.extra/` reports: metrics JSON and plots (written by `training.reports`).

A version is written under a hidden temporary name and renamed into place, so a server
watching the folder never sees half an export, and an existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf

METADATA = Path("assets.extra") / "metadata.json"


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    return max(existing_versions(model_dir), default=0) + 1


def export_model(
    model: keras.Model,
    predict,
    base_dir: str | Path,
    name: str,
    input_spec: dict,
    metadata: dict,
    reports=None,
) -> Path:
    """Write `predict` (a function of one raw input batch returning probabilities) as the
    `serving_default` signature of the next version of `name`; returns the version folder.

    `input_spec`: {"name", "shape" (without batch), "dtype", optionally "feature_names"}.
    `reports(folder)`, if given, writes extra files into `assets.extra/` before publishing.
    """
    model_dir = Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    staging = model_dir / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)

    signature = tf.TensorSpec([None, *input_spec["shape"]], input_spec["dtype"], name=input_spec["name"])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda x: {"probabilities": predict(x)}, [signature])
    archive.write_out(str(staging), verbose=False)

    full = {
        "name": name,
        "version": str(version),
        **metadata,
        "signature": "serving_default",
        "input": {**input_spec, "shape": [None, *input_spec["shape"]]},
        "output": {"name": "probabilities", "shape": [None, len(metadata["labels"])], "dtype": "float32"},
    }
    extra = staging / METADATA.parent
    extra.mkdir(exist_ok=True)
    (staging / METADATA).write_text(json.dumps(full, indent=2) + "\n")
    if reports is not None:
        reports(extra)

    target = model_dir / str(version)
    staging.rename(target)  # fails rather than overwrite if another run took this version
    return target


def load_metadata(version_dir: str | Path) -> dict:
    return json.loads((Path(version_dir) / METADATA).read_text())
