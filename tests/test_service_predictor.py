"""One exported version loaded: what it takes and answers comes from its metadata, and an export
that cannot keep its promises is refused with the reason."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from service.predictor import ModelError, Predictor, load_predictor


def altered(exported, tmp_path, version="4", **changes):
    """A copy of an export whose metadata.json has `changes` merged in (one level deep)."""
    copy = tmp_path / exported.parent.name / version
    shutil.copytree(exported, copy)
    path = copy / "assets.extra" / "metadata.json"
    metadata = json.loads(path.read_text())
    for key, value in changes.items():
        metadata[key] = {**metadata[key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(metadata))
    return copy


def test_an_image_model_takes_uint8_pixels_of_its_size_width_by_height(exports):
    wide = Predictor(exports["wide"], "/CPU:0")
    assert (wide.name, wide.version, wide.kind, wide.labels) == ("wide", 1, "image", ["left", "right"])
    assert (wide.input_shape, wide.input_dtype, wide.image_size) == ((16, 24, 3), np.uint8, (24, 16))
    assert wide.feature_names is None and wide.contract.labels == ["left", "right"]
    assert wide.assets_dir == exports["wide"] / "assets.extra" and wide.output_dtype == np.float32


def test_a_feature_model_takes_float32_rows_and_its_probabilities_sum_to_one(exports):
    iris = Predictor(exports["iris"], "/CPU:0")
    assert (iris.kind, iris.input_shape, iris.input_dtype) == ("vector", (4,), np.float32)
    assert len(iris.feature_names) == 4
    outputs = iris.predict(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32))
    assert list(outputs) == ["probabilities"]  # no out-of-distribution score declared
    probabilities = outputs["probabilities"]
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_feature_names_must_count_the_features(exports, tmp_path):
    names = ["a", "b", "c"]
    with pytest.raises(ModelError, match=r"^3 feature names for 4 features$"):
        load_predictor(altered(exports["iris"], tmp_path, input={"feature_names": names}), "/CPU:0", [1])


def test_feature_names_on_an_image_model_are_refused(exports, tmp_path):
    names = ["r", "g", "b"]
    with pytest.raises(ModelError, match=r"^3 feature names for 32 features$"):
        load_predictor(altered(exports["cifar10"], tmp_path, input={"feature_names": names}), "/CPU:0", [1])


@pytest.mark.parametrize(
    ("input", "shown"),
    [
        ({"dtype": "float32"}, "shape [None, 32, 32, 3] of float32"),  # an image of floats
        ({"shape": [None, 32, 32, 4]}, "shape [None, 32, 32, 4] of uint8"),  # four channels
        ({"shape": [None, 32, 96]}, "shape [None, 32, 96] of uint8"),  # no channel axis
    ],
)
def test_inputs_other_than_rgb_images_or_feature_rows_are_refused(exports, tmp_path, input, shown):
    expected = (
        f"unsupported input: {shown}; expected uint8 [None, H, W, 3] images or float32 [None, N] features"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(expected)}$"):
        load_predictor(altered(exports["cifar10"], tmp_path, input=input), "/CPU:0", [1])


def test_feature_rows_must_be_float32_and_flat(exports, tmp_path):
    with pytest.raises(ModelError, match=r"^unsupported input: shape \[None, 4\] of uint8;"):
        load_predictor(altered(exports["iris"], tmp_path, input={"dtype": "uint8"}), "/CPU:0", [1])
    with pytest.raises(ModelError, match=r"^unsupported input: shape \[None, 2, 2\] of float32;"):
        flat = altered(exports["iris"], tmp_path, version="5", input={"shape": [None, 2, 2]})
        load_predictor(flat, "/CPU:0", [1])


def test_warming_up_checks_one_row_of_probabilities_per_input_row_and_label(exports, tmp_path):
    three_labels = altered(exports["cifar10"], tmp_path, labels=["a", "b", "c"])
    with pytest.raises(ModelError, match=r"^output shape \(8, 10\), expected \(8, 3\)$"):
        load_predictor(three_labels, "/CPU:0", [8])


@pytest.mark.parametrize(
    ("row_sum", "accepted"), [(1.0009, True), (0.9991, True), (1.002, False), (1.5, False)]
)
def test_warming_up_checks_the_outputs_are_probabilities(exports, monkeypatch, row_sum, accepted):
    predictor = Predictor(exports["iris"], "/CPU:0")

    def answers(batch, warming_up):
        return {"probabilities": np.full((len(batch), 3), row_sum / 3)}

    monkeypatch.setattr(predictor, "predict", answers)
    if accepted:
        predictor.warm_up([1, 2])
    else:
        with pytest.raises(ModelError, match=r"^outputs are not probabilities \(rows do not sum to 1\)$"):
            predictor.warm_up([1, 2])


def test_a_broken_export_is_a_model_error_naming_what_failed(exports, tmp_path):
    broken = altered(exports["iris"], tmp_path)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match=r"^[A-Za-z]+Error: ") as refused:
        load_predictor(broken, "/CPU:0", [1])
    assert not str(refused.value).startswith("ModelError")
    with pytest.raises(ModelError, match=r"^no assets.extra/metadata.json in "):
        load_predictor(tmp_path / "iris" / "absent" / "1", "/CPU:0", [1])
