"""The out-of-distribution score: `python -m training ood` adds it to a calibrated export as a
second signature output, leaves the probabilities exactly as they were, and declares a
threshold that the exported graph's own scores honour; the outlier pictures are rebuilt from
packages, split by source."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_calibration import CLASSES, SMALL, tiny_archive

from training import cifar10, export, ood, ood_data
from training.cli import main as training_main


def scored_tree(root: Path) -> Path:
    """models/cifar10/1 (a tiny CNN, its recipe in the metadata), calibrated as v2."""
    archive = tiny_archive(root / "tiny.tar.gz")
    images = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    keras.utils.set_random_seed(0)
    model = cifar10.build_model(SMALL, images, num_classes=len(CLASSES))  # normalization unlike the data's
    spec = {"name": "image", "shape": [32, 32, 3], "dtype": "uint8", "color": "RGB", "range": [0, 255]}
    spec["jpeg_round_trip"] = jpeg = {"quality": 75, "chroma_subsampled": True}
    meta = {
        "labels": CLASSES,
        "metrics": {"validation": {"accuracy": 0.5, "loss": 1.0, "examples": 6}},
        "training": {"command": "tiny", "data_source": str(archive), "seed": 0, "recipe": SMALL.to_dict()},
    }
    models = root / "models"
    export.export_model(model, cifar10.predict_fn(model, SMALL, jpeg=jpeg), models, "cifar10", spec, meta)
    training_main(["calibrate", str(models / "cifar10" / "1")])
    return models


def outlier_folder(folder: Path) -> Path:
    """ood-dev.npz and ood-eval.npz as `training.ood_data` writes them, from synthetic pictures."""
    folder.mkdir()
    for split, seed in (("dev", 1), ("eval", 2)):
        x = ood_data.synthetic(60, seed)
        group = np.array(["synthetic", "texture"] * 30)
        np.savez(folder / f"ood-{split}.npz", x=x, group=group, source=np.array([f"s/{split}"] * 60))
    return folder


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, Path]:
    """(calibrated source v2, scored v3)."""
    root = tmp_path_factory.mktemp("ood")
    models = scored_tree(root)
    training_main(
        ["ood", str(models / "cifar10" / "2"), "--ood-data", str(outlier_folder(root / "outliers"))]
    )
    return models / "cifar10" / "2", models / "cifar10" / "3"


def serve(version: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(image=tf.constant(images)).items()}


def test_the_network_is_rebuilt_exactly_from_an_export(scored):
    source, _ = scored
    meta = export.load_metadata(source)
    validation = ood_data.synthetic(12, 5)
    network = ood.rebuild_network(source, SMALL, np.zeros((4, 32, 32, 3), np.uint8))
    jpeg = meta["input"]["jpeg_round_trip"]
    rebuilt = cifar10.predict_fn(network, SMALL, jpeg=jpeg)(tf.constant(validation)).numpy()
    from training.calibration import apply_temperature

    calibrated = apply_temperature(rebuilt, meta["calibration"]["temperature"])
    np.testing.assert_allclose(calibrated, serve(source, validation)["probabilities"], atol=1e-5)


def test_the_scored_version_answers_the_same_probabilities_and_a_score(scored):
    source, target = scored
    images = ood_data.synthetic(30, 9)
    before, after = serve(source, images), serve(target, images)
    assert set(after) == {"probabilities", "ood_score"} and after["ood_score"].shape == (30,)
    np.testing.assert_allclose(after["probabilities"], before["probabilities"], atol=1e-5)
    assert np.isfinite(after["ood_score"]).all()


def test_the_declared_threshold_is_the_graphs_own_scores_on_validation(scored):
    _, target = scored
    meta = export.load_metadata(target)
    declared = meta["ood"]
    assert declared["output"] == "ood_score" and declared["method"] == ood.METHOD
    assert meta["lineage"]["source_version"] == 2 and "calibration" in meta
    from training import data

    validation = data.load_cifar10(meta["training"]["data_source"], seed=0).validation
    scores = serve(target, validation.x)["ood_score"]
    # The threshold keeps 95% of validation images answered, computed on the graph's scores.
    assert np.mean(scores > declared["threshold"]) == pytest.approx(
        declared["abstained_validation"], abs=1e-4
    )
    assert declared["abstained_validation"] <= 0.05 + 1 / len(scores)
    assert set(declared["evaluation"]) == {"synthetic", "texture"}
    for row in declared["evaluation"].values():
        assert 0 <= row["auroc"] <= 1 and 0 <= row["fpr_at_95_tpr"] <= 1 and row["images"] == 30
    assert set(declared["baselines"]) == {"max_softmax_probability", "energy", "knn_50_pooled_features"}
    card = (target / "assets.extra" / "MODEL_CARD.md").read_text()
    assert "## Out-of-distribution score" in card and str(declared["threshold"]) in card


def test_ood_refuses_an_uncalibrated_export(scored, tmp_path):
    source, _ = scored
    uncalibrated = Path(shutil.copytree(source.parent / "1", tmp_path / "cifar10" / "1"))
    with pytest.raises(SystemExit, match="calibrated CIFAR-10 image exports"):
        training_main(["ood", str(uncalibrated), "--ood-data", str(tmp_path)])


def test_auroc_and_fpr_read_as_their_definitions():
    inside, outside = np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.5, 4.0, 5.0, 6.0])
    assert ood.auroc(inside, outside) == pytest.approx(15 / 16)  # one pair of 16 out of order
    assert ood.auroc(outside, inside) == pytest.approx(1 / 16)
    # Flagging 95% of the outliers takes every score from their 5th percentile up: 2.725 (3.0 of the
    # inside is above it), then 1.175 (2.0 and 3.0 are).
    assert ood.fpr_at_95_tpr(inside, outside) == pytest.approx(0.25)
    assert ood.fpr_at_95_tpr(inside, np.array([0.5, 5, 6, 7])) == pytest.approx(0.5)


def test_the_head_in_the_graph_computes_the_numpy_score():
    rng = np.random.default_rng(0)
    head = ood.Head(rng.normal(size=256 + 10 + 1).astype(np.float32), 0.3, 0.55)
    features, logits = rng.random((5, 256), np.float32) * 3, rng.normal(size=(5, 10)).astype(np.float32)
    graph = head.in_graph(tf.constant(features), tf.constant(logits)).numpy()
    np.testing.assert_allclose(graph, head.score(features, logits), rtol=1e-4, atol=1e-4)


def test_outlier_sources_fall_in_one_split_each_and_gimp_patterns_are_read(tmp_path):
    names = [f"gimp/pattern{i}" for i in range(60)]
    splits = {name: ood_data.split_of(name) for name in names}
    assert splits == {name: ood_data.split_of(name) for name in names}  # stable
    assert 10 <= sum(s == "eval" for s in splits.values()) <= 30  # about one in three
    import struct

    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    name = b"tiny\x00"
    header = struct.pack(">5I4s", 24 + len(name), 1, 3, 2, 3, b"GPAT") + name
    (tmp_path / "tiny.pat").write_bytes(header + pixels.tobytes())
    np.testing.assert_array_equal(ood_data.read_gimp_pattern(tmp_path / "tiny.pat"), pixels)
    crops = ood_data.crops(np.zeros((40, 50, 4), np.uint8), 3, np.random.default_rng(0))  # all transparent
    assert crops.shape == (0, 32, 32, 3)
    crops = ood_data.crops(np.full((40, 50, 3), 7, np.uint8), 3, np.random.default_rng(0))
    assert crops.shape == (3, 32, 32, 3) and (crops == 7).all()
