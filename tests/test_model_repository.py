"""The on-disk contract between training and serving: layout, versions and metadata.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from model_repository import (
    MetadataError,
    existing_versions,
    load_metadata,
    next_version,
    read_metadata,
    staging_dir,
    version_files,
    write_metadata,
)

ROOT = Path(__file__).resolve().parents[1]


def imported_after(statement: str) -> set[str]:
    """Top-level packages loaded by `statement` in a fresh interpreter."""
    code = f"{statement}; import sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


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


def test_an_export_is_staged_in_a_hidden_folder_named_by_version_and_process(tmp_path):
    staging = staging_dir(tmp_path / "iris", 3, 4242)
    assert staging == tmp_path / "iris" / ".staging-3-4242"
    staging.mkdir(parents=True)
    assert existing_versions(tmp_path / "iris") == []  # never served


def test_metadata_is_written_as_indented_json_and_read_back_whole(tmp_path):
    written = {"name": "m", "version": 7, "labels": ["a"], "extra": {"anything": [1, 2]}}
    write_metadata(tmp_path, written)
    write_metadata(tmp_path, written)  # again, over the first: assets.extra/ exists by then
    text = (tmp_path / "assets.extra" / "metadata.json").read_text()
    assert text == json.dumps(written, indent=2) + "\n"
    assert load_metadata(tmp_path) == written and load_metadata(str(tmp_path)) == written


def test_servable_metadata_takes_numbers_as_versions_keeps_extras_and_cannot_change(tmp_path):
    tensor = {"name": "x", "shape": [None, 4], "dtype": "float32"}
    write_metadata(
        tmp_path,
        {"name": "m", "version": 7, "labels": ["a", "b"], "input": {**tensor, "scale": 1},
         "output": {**tensor, "name": "y"}, "signature": "serving_default", "metrics": {"accuracy": 0.9}},
    )  # fmt: skip
    metadata = read_metadata(str(tmp_path))
    assert metadata.version == "7" and metadata.input.feature_names is None
    assert metadata.metrics == {"accuracy": 0.9} and metadata.input.scale == 1  # extras kept
    with pytest.raises(ValidationError, match="frozen"):
        metadata.name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        metadata.input.name = "other"


def test_an_out_of_distribution_score_is_declared_by_output_and_threshold_or_absent(tmp_path):
    tensor = {"name": "x", "shape": [None, 4], "dtype": "float32"}
    plain = {"name": "m", "version": 1, "labels": ["a"], "input": tensor, "output": {**tensor, "name": "y"},
             "signature": "serving_default"}  # fmt: skip
    write_metadata(tmp_path, plain)
    assert read_metadata(tmp_path).ood is None  # older exports: no score
    write_metadata(
        tmp_path, {**plain, "ood": {"output": "ood_score", "method": "m", "threshold": 1.5, "extra": 1}}
    )
    declared = read_metadata(tmp_path).ood
    assert declared is not None and (declared.output, declared.threshold) == ("ood_score", 1.5)
    write_metadata(tmp_path, {**plain, "ood": {"output": "ood_score", "method": "m"}})
    with pytest.raises(MetadataError, match=r"ood\.threshold: Field required"):
        read_metadata(tmp_path)


def test_an_unservable_metadata_file_names_every_problem_and_where(tmp_path):
    write_metadata(tmp_path, {"name": "m", "labels": "abc"})
    with pytest.raises(MetadataError) as refused:
        read_metadata(tmp_path)
    message = str(refused.value)
    assert message.startswith("assets.extra/metadata.json does not describe a servable model: ")
    assert "version: Field required; labels: Input should be a valid array; input: Field required" in message
    (tmp_path / "assets.extra" / "metadata.json").write_text("[1]")
    with pytest.raises(MetadataError, match="servable model: file: Input should be an object"):
        read_metadata(tmp_path)


def test_every_part_of_servable_metadata_cannot_change_once_read(tmp_path):
    tensor = {"name": "x", "shape": [None, 4], "dtype": "float32"}
    fast_form = {"format": "tflite", "path": "m.tflite", "input": "x", "outputs": ["y"]}
    write_metadata(
        tmp_path,
        {"name": "m", "version": 1, "labels": ["a"], "input": tensor, "output": {**tensor, "name": "y"},
         "signature": "serving_default",
         "calibration": {"method": "temperature", "temperature": 1.5, "after": {"ece": 0.01}},
         "runtimes": {"tflite-int8": fast_form},
         "ood": {"output": "ood_score", "method": "m", "threshold": 1.5}},
    )  # fmt: skip
    metadata = read_metadata(tmp_path)
    fast = metadata.runtimes["tflite-int8"]
    assert fast.includes_jpeg_round_trip is False  # unless the export says its graph does it
    for part, field in [
        (metadata.calibration, "temperature"),
        (metadata.calibration.after, "ece"),
        (fast, "path"),
        (metadata.ood, "threshold"),
    ]:
        with pytest.raises(ValidationError, match="frozen"):
            setattr(part, field, 2.0)


def test_a_version_folders_files_are_listed_by_path_inside_it_size_and_time(tmp_path, monkeypatch):
    (tmp_path / "variables").mkdir()
    for name, content in [("saved_model.pb", b"graph"), ("variables/variables.index", b"ix"), ("b.txt", b"")]:
        (tmp_path / name).write_bytes(content)
    listed = version_files(tmp_path)
    assert [(path, size) for path, size, _ in listed] == [
        ("b.txt", 0),
        ("saved_model.pb", 5),
        ("variables/variables.index", 2),
    ]
    assert all(isinstance(mtime, int) and mtime > 0 for *_, mtime in listed)
    stat, gone = Path.stat, []

    def first_vanishes(path, *args, **kwargs):  # removed between the folder's listing and its stat
        if not gone:
            gone.append(path.relative_to(tmp_path).as_posix())
            raise FileNotFoundError(path)
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", first_vanishes)
    rest = [path for path, *_ in version_files(tmp_path)]
    assert rest == [path for path, *_ in listed if path not in gone]  # the others all listed


# Last: each starts an interpreter that imports TensorFlow (seconds), the rest take milliseconds.
def test_the_service_reads_exports_without_the_training_code():
    # TensorFlow itself loads Keras, so "no Keras" cannot be asked of the service; no
    # `training` (and so none of its model code, data loaders or plotting) can.
    assert "training" not in imported_after("import service.app")


def test_the_contract_needs_neither_tensorflow_nor_keras():
    assert not {"tensorflow", "keras", "training"} & imported_after("import model_repository")
