"""The on-disk contract between training and serving: layout, versions and metadata.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_repository import MetadataError, existing_versions, next_version, read_metadata

ROOT = Path(__file__).resolve().parents[1]


def imported_after(statement: str) -> set[str]:
    """Top-level packages loaded by `statement` in a fresh interpreter."""
    code = f"{statement}; import sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_service_reads_exports_without_the_training_code():
    # TensorFlow itself loads Keras, so "no Keras" cannot be asked of the service; no
    # `training` (and so none of its model code, data loaders or plotting) can.
    assert "training" not in imported_after("import service.app")


def test_the_contract_needs_neither_tensorflow_nor_keras():
    assert not {"tensorflow", "keras", "training"} & imported_after("import model_repository")


def test_versions_are_the_integer_folders_in_order(tmp_path):
    for name in ["2", "10", "1", ".staging-11-123", "notes", "latest", "¹", "٣"]:  # not ASCII digits
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file, not a version")
    assert existing_versions(tmp_path) == [1, 2, 10]
    assert next_version(tmp_path) == 11
    assert existing_versions(tmp_path / "absent") == [] and next_version(tmp_path / "absent") == 1


def test_metadata_keeps_what_serving_does_not_need(exports):
    metadata = read_metadata(exports["iris"])
    assert metadata.input.feature_names and metadata.output.name == "probabilities"
    written = json.loads((exports["iris"] / "assets.extra" / "metadata.json").read_text())
    assert metadata.model_dump(mode="json", exclude_unset=True) == written  # metrics, training, ...


def test_metadata_that_cannot_be_served_is_a_clear_error(tmp_path, exports):
    written = json.loads((exports["iris"] / "assets.extra" / "metadata.json").read_text())
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / "assets.extra" / "metadata.json").write_text(json.dumps({**written, "labels": "abc"}))
    with pytest.raises(MetadataError, match="labels: Input should be a valid"):
        read_metadata(tmp_path)
    with pytest.raises(MetadataError, match="no assets.extra/metadata.json"):
        read_metadata(tmp_path / "absent")
