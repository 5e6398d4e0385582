"""The model repository on disk, the contract between `training` (which writes it) and `service`
(which reads it): the layout TF Serving and Triton call a model repository.

    <root>/<name>/<version>/          one exported SavedModel; the folder name is the version
    <root>/<name>/<version>/assets.extra/metadata.json    what the export promises (`Metadata`)
    <root>/<name>/.staging-<version>-<pid>/               an export in progress, never served

Only the standard library and pydantic: the service reads exports without importing Keras.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

METADATA = Path("assets.extra") / "metadata.json"
STAGING_PREFIX = ".staging-"


class MetadataError(ValueError):
    """A metadata.json that is missing, not JSON, or does not describe a servable model."""


class TensorSpec(BaseModel):
    """One tensor of the serving signature; `shape` includes the batch dimension (None)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    shape: list[int | None]
    dtype: str
    feature_names: list[str] | None = None


class Scores(BaseModel):
    """Calibration scores of a model's probabilities on held-out data."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ece: float | None = None  # expected calibration error, 15 bins


class Calibration(BaseModel):
    """How the export's probabilities were calibrated (temperature scaling, inside the graph)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    temperature: float
    fitted_on: str | None = None  # which held-out data
    before: Scores | None = None
    after: Scores | None = None


class FastRuntime(BaseModel):
    """A second, faster form of the same model beside the SavedModel (`training.fastpath`): a file
    of the version folder that a runtime other than TensorFlow runs, with what it was measured to
    give. Its graph may leave out steps the SavedModel's holds (`includes_jpeg_round_trip`): whoever
    runs it does those outside, exactly as declared in `input`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["tflite"]
    path: str  # inside the version folder
    device: Literal["cpu"] = "cpu"  # where it is meant to run (the SavedModel serves GPUs)
    input: str  # the one input, as the SavedModel's signature names it
    outputs: list[str]  # every output of the SavedModel's signature, same names
    includes_jpeg_round_trip: bool = False
    evaluation: dict[str, Any] | None = None  # how it compares with the SavedModel on held-out data


class OutOfDistribution(BaseModel):
    """The export's out-of-distribution score: a second output of its signature, higher for
    inputs less like the training classes, and the threshold above which answers abstain."""

    model_config = ConfigDict(extra="allow", frozen=True)

    output: str  # the signature output that holds the score, [N] float32
    method: str
    threshold: float  # abstain when the score is above it (fitted on held-out training-class data)
    fitted_on: str | None = None
    evaluation: dict[str, Any] | None = None  # AUROC / FPR at 95% TPR per out-of-distribution set


class Metadata(BaseModel):
    """`assets.extra/metadata.json`: what serving relies on, and what the service reports
    (metrics, calibration, model card). Exports carry more (how they were trained, ...), kept
    as extra fields and never required."""

    model_config = ConfigDict(extra="allow", frozen=True, coerce_numbers_to_str=True)

    name: str
    version: str
    labels: list[str]
    input: TensorSpec
    output: TensorSpec
    signature: str
    metrics: dict[str, Any] | None = None
    calibration: Calibration | None = None
    card: str | None = None  # the model card's path inside the version folder
    # Faster forms of the same model, by name (e.g. "tflite-int8"); the service picks one on CPUs.
    runtimes: dict[str, FastRuntime] = {}
    ood: OutOfDistribution | None = None  # older exports and non-image models have no score


def existing_versions(model_dir: Path) -> list[int]:
    """The published versions of one model, oldest first; staging and other hidden folders are not,
    nor any other name than ASCII digits (`str.isdigit` also takes '²', which `int` refuses)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if is_version(p.name) and p.is_dir())


def version_files(version_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What a version folder holds, as (path inside it, size, modification time in ns) for every
    entry, in order: equal as long as nothing in it was added, removed or rewritten. Entries
    that vanish while it is read are left out (the next reading differs anyway)."""
    files = []
    for folder, _, names in os.walk(version_dir):
        for name in names:
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((path.relative_to(version_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


def is_version(name: str) -> bool:
    return name.isascii() and name.isdigit()


def next_version(model_dir: Path) -> int:
    return max(existing_versions(model_dir), default=0) + 1


def staging_dir(model_dir: Path, version: int, pid: int) -> Path:
    """Where an export of `version` by process `pid` is written before being renamed into place."""
    return model_dir / f"{STAGING_PREFIX}{version}-{pid}"


def write_metadata(version_dir: str | Path, metadata: dict) -> None:
    path = Path(version_dir) / METADATA
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def load_metadata(version_dir: str | Path) -> dict:
    """metadata.json as written, every key included, unchecked."""
    return json.loads((Path(version_dir) / METADATA).read_text())


def read_metadata(version_dir: str | Path) -> Metadata:
    """metadata.json, checked to describe a servable model, or MetadataError saying what is wrong."""
    path = Path(version_dir) / METADATA
    try:
        return Metadata.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise MetadataError(f"no {METADATA} in {version_dir}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise MetadataError(f"{METADATA} does not describe a servable model: {problems}") from None
