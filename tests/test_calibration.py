"""Calibration: the fitted temperature, its metrics, the `calibrate` command and the model card,
on tiny models and data."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from deployments import serving
from PIL import Image

from training import calibration, cifar10, export, robustness
from training.cli import main as training_main

CLASSES = ["cat", "dog", "frog"]
SMALL = cifar10.Recipe(widths=(8, 16, 16), batch_size=32, epochs=1)


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_SERVING_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# --- the temperature -------------------------------------------------------------------------


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping Gaussian clusters in 2-D: a problem no model gets entirely right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[0, 0], [2, 0], [1, 1.7]], dtype=np.float32)
    return (centres[y] + rng.normal(0, 0.8, (n, 2))).astype(np.float32), y


def test_fitted_temperature_lowers_validation_nll_of_a_small_trained_model():
    keras.utils.set_random_seed(0)
    x, y = blobs(600, seed=0)
    x_val, y_val = blobs(400, seed=1)
    x_test, y_test = blobs(400, seed=2)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    # Heavy label smoothing makes it under-confident, as the shipped CIFAR-10 network is.
    model.compile("adam", keras.losses.CategoricalCrossentropy(label_smoothing=0.5))
    model.fit(x, np.eye(3)[y], epochs=60, batch_size=32, verbose=0)
    val_p, test_p = model.predict(x_val, verbose=0), model.predict(x_test, verbose=0)

    fitted = calibration.fit(val_p, y_val, "validation")
    assert 0.1 < fitted.temperature < 1  # sharpens, away from the search bounds
    assert fitted.after["nll"] < fitted.before["nll"] - 0.02
    assert fitted.after["ece"] < fitted.before["ece"]
    assert fitted.after["accuracy"] == fitted.before["accuracy"]
    # It is the minimum, and it carries over to data it was not fitted on.
    for nearby in (fitted.temperature * 1.05, fitted.temperature / 1.05):
        nll = calibration.negative_log_likelihood(calibration.apply_temperature(val_p, nearby), y_val)
        assert nll > calibration.negative_log_likelihood(
            calibration.apply_temperature(val_p, fitted.temperature), y_val
        )
    test_after = calibration.apply_temperature(test_p, fitted.temperature)
    assert (
        calibration.calibration_metrics(test_after, y_test)["nll"]
        < calibration.calibration_metrics(test_p, y_test)["nll"]
    )


@pytest.mark.parametrize("temperature", [0.05, 0.3, 0.9, 1.7, 20.0])
def test_calibration_never_changes_an_argmax(temperature):
    rng = np.random.default_rng(int(temperature * 100))
    # Logits from nearly flat to extremely peaked, as softmax outputs in float32.
    logits = rng.normal(0, 1, (5000, 10)) * rng.choice([0.01, 1, 10, 60], (5000, 1))
    probabilities = tf.nn.softmax(tf.constant(logits, tf.float32)).numpy()
    in_numpy = calibration.apply_temperature(probabilities, temperature)
    in_graph = calibration.temperature_scaled(tf.constant(probabilities), temperature).numpy()
    np.testing.assert_array_equal(in_numpy.argmax(1), probabilities.argmax(1))
    np.testing.assert_array_equal(in_graph.argmax(1), probabilities.argmax(1))
    np.testing.assert_allclose(in_graph, in_numpy, atol=1e-5)
    np.testing.assert_allclose(in_graph.sum(1), 1, atol=1e-5)


def test_calibration_metrics_on_hand_made_predictions():
    # Four answers at confidence 0.8, three right (0.05 off); two at 0.95, one right (0.45 off).
    p = np.array([[0.8, 0.2]] * 4 + [[0.05, 0.95]] * 2)
    y = np.array([0, 0, 0, 1, 1, 0])
    metrics = calibration.calibration_metrics(p, y)
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert metrics["mean_confidence"] == pytest.approx((4 * 0.8 + 2 * 0.95) / 6, abs=1e-4)
    assert metrics["ece"] == pytest.approx((4 * 0.05 + 2 * 0.45) / 6, abs=1e-4)  # weighted by bin counts
    assert metrics["nll"] == pytest.approx(
        -(3 * np.log(0.8) + np.log(0.2) + np.log(0.95) + np.log(0.05)) / 6, abs=1e-4
    )
    assert metrics["brier"] == pytest.approx((3 * 0.08 + 1.28 + 2 * 0.05**2 + 2 * 0.95**2) / 6, abs=1e-4)


# --- calibrating an existing export ----------------------------------------------------------


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def tiny_archive(path: Path, per_class: int = 20) -> Path:
    """`cifar10/train/<class>/<n>.png`: each class its own mean colour, so a model can learn it."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                image = np.clip(rng.normal(60 + 70 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                blob = _png(image)
                info = tarfile.TarInfo(f"cifar10/train/{name}/{i:04d}.png")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return path


def uncalibrated_export(root: Path, archive: Path) -> Path:
    """An export as the project made them before calibration existed (like cifar10/3): a tiny
    CNN behind a JPEG round trip, metadata without a temperature."""
    images = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    keras.utils.set_random_seed(0)
    model = cifar10.build_model(SMALL, images, num_classes=len(CLASSES))
    predict = cifar10.predict_fn(model, SMALL, jpeg={"quality": 75, "chroma_subsampled": True})
    spec = {"name": "image", "shape": [32, 32, 3], "dtype": "uint8", "color": "RGB", "range": [0, 255]}
    meta = {
        "labels": CLASSES,
        "metrics": {"validation": {"accuracy": 0.5, "loss": 1.0, "examples": 6}, "by_tta": {"none": 0.5}},
        "training": {
            "command": "python -m training cifar10 --data tiny",
            "data_source": str(archive),
            "seed": 0,
        },
    }
    return export.export_model(model, predict, root, "cifar10", spec, meta)


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibrate")
    archive = tiny_archive(root / "tiny.tar.gz")
    uncalibrated_export(root / "models", archive)
    return root / "models"


@pytest.fixture
def models(source_tree, tmp_path) -> Path:
    """A private copy of the models tree with the uncalibrated cifar10 v1."""
    return Path(shutil.copytree(source_tree, tmp_path / "models"))


@pytest.fixture(scope="module")
def calibrated(source_tree, tmp_path_factory) -> tuple[Path, Path, str]:
    """(source, calibrated version, hash of the source before): `calibrate` run once, on a copy;
    the tests that use it only read."""
    models = Path(shutil.copytree(source_tree, tmp_path_factory.mktemp("calibrated") / "models"))
    source = models / "cifar10" / "1"
    before = folder_hash(source)
    training_main(["calibrate", str(source)])
    return source, models / "cifar10" / "2", before


def serve(version: Path, images: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    return signature(image=tf.constant(images))["probabilities"].numpy()


def test_calibrate_writes_the_next_version_and_leaves_the_source_untouched(calibrated):
    source, target, source_hash = calibrated
    assert folder_hash(source) == source_hash
    assert sorted(p.name for p in target.parent.iterdir()) == ["1", "2"]  # no staging left behind

    old, new = export.load_metadata(source), export.load_metadata(target)
    assert new["version"] == "2"
    assert new["lineage"] == {"source_version": 1, "command": f"python -m training calibrate {source}"}
    assert new["card"] == "assets.extra/MODEL_CARD.md"
    assert set(old) <= set(new)  # every key kept
    assert new["training"] == old["training"] and new["input"] == old["input"]
    assert new["metrics"]["by_tta"] == old["metrics"]["by_tta"]
    fitted = new["calibration"]
    assert fitted["method"] == "temperature" and fitted["fitted_on"] == "validation"
    assert (
        set(fitted["before"])
        == set(fitted["after"])
        == {"accuracy", "nll", "ece", "brier", "mean_confidence"}
    )

    # The new signature serves the source's probabilities, recalibrated; answers unchanged.
    images = np.random.default_rng(5).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    before, after = serve(source, images), serve(target, images)
    np.testing.assert_allclose(after, calibration.apply_temperature(before, fitted["temperature"]), atol=1e-4)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))


def test_calibrate_never_overwrites_a_version(models):
    (models / "cifar10" / "7").mkdir()
    training_main(["calibrate", str(models / "cifar10" / "1")])
    assert export.load_metadata(models / "cifar10" / "8")["lineage"]["source_version"] == 1
    assert not any((models / "cifar10" / "7").iterdir())


def test_calibrate_refuses_an_export_without_probabilities(models):
    source = models / "cifar10" / "1"
    logits_only = models / "cifar10" / "2"
    module = tf.Module()
    module.serve = tf.function(
        lambda image: {"logits": tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2])},
        input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="image")],
    )
    tf.saved_model.save(module, str(logits_only), signatures={"serving_default": module.serve})
    (logits_only / "assets.extra").mkdir()
    (logits_only / "assets.extra" / "metadata.json").write_text(
        json.dumps({**export.load_metadata(source), "version": "2"})
    )
    listing, hashed = sorted(p.name for p in source.parent.iterdir()), folder_hash(logits_only)

    with pytest.raises(SystemExit, match="returns \\['logits'\\], not probabilities.*nothing written"):
        training_main(["calibrate", str(logits_only)])
    assert sorted(p.name for p in source.parent.iterdir()) == listing
    assert folder_hash(logits_only) == hashed


def test_calibrate_refuses_a_calibrated_export_and_a_folder_that_is_not_one(calibrated, tmp_path):
    _, target, _ = calibrated
    with pytest.raises(SystemExit, match="calibrated already"):
        training_main(["calibrate", str(target)])
    with pytest.raises(SystemExit, match="not an export"):
        training_main(["calibrate", str(tmp_path)])
    assert sorted(p.name for p in target.parent.iterdir()) == ["1", "2"]


# --- the model card --------------------------------------------------------------------------


def test_the_card_and_its_diagrams_are_written(calibrated):
    _, target, _ = calibrated
    extra = target / "assets.extra"
    meta = export.load_metadata(target)
    card = (target / meta["card"]).read_text()
    for section in [
        "## What it is for",
        "## Data and split",
        "## Calibration",
        "## Robustness",
        "## Known limits",
    ]:
        assert section in card
    assert f"T = {meta['calibration']['temperature']:.4f}" in card
    assert meta["lineage"]["command"] in card and meta["training"]["command"] in card
    for condition in robustness.CORRUPTIONS:
        assert f"| {condition} |" in card
    assert f"on {4 * robustness.OOD_PER_KIND} inputs that are none of them" in card
    for png in ["reliability_before", "reliability_after", "confusion_matrix", "per_class_accuracy"]:
        with Image.open(extra / f"{png}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
        assert f"({png}.png)" in card
    report = json.loads((extra / "metrics.json").read_text())
    assert set(report["robustness"]) == {"clean", *robustness.CORRUPTIONS}
    assert report["out_of_distribution_confidence"]["all"]["count"] == 4 * robustness.OOD_PER_KIND


# --- corruptions -----------------------------------------------------------------------------


def test_corruptions_keep_shape_and_the_service_undoes_an_upscale():
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for corrupt in robustness.CORRUPTIONS.values():
        out = corrupt(images)
        assert out.shape == images.shape and out.dtype == np.uint8
    # The service solves for the 32x32 original of a bicubic enlargement (service.resizing).
    restored = robustness.upscaled_through_the_service(images)
    assert np.abs(restored.astype(int) - images).mean() < 1
    flat = np.full((1, 32, 32, 3), 100, np.uint8)
    np.testing.assert_array_equal(robustness.gaussian_blur(flat), flat)
    assert robustness.contrast(flat).mean() == 100 and robustness.brightness(flat).mean() == 130


# --- what the service says about it ----------------------------------------------------------


def test_models_endpoint_shows_temperature_ece_and_card_of_the_live_version(calibrated):
    _, target, _ = calibrated
    meta = export.load_metadata(target)
    with serving(target.parent.parent) as client:
        (cifar10,) = client.get("/models").json()["models"]
        card = client.get(cifar10["card"])
    assert cifar10["live_version"] == "2"
    assert cifar10["temperature"] == meta["calibration"]["temperature"]
    assert cifar10["validation_ece"] == meta["calibration"]["after"]["ece"]
    assert cifar10["card"] == "/models/cifar10/card/MODEL_CARD.md"
    assert card.status_code == 200
    assert card.text == (target / "assets.extra" / "MODEL_CARD.md").read_text()


def test_without_the_service_package_the_upscale_row_is_left_out_saying_why(monkeypatch):
    # Docker's train target copies training/ alone: a run there must still finish, card and all.
    monkeypatch.setitem(sys.modules, "service.images", None)
    images = np.random.default_rng(4).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros(6, dtype=int)

    def predict(x):
        return tf.one_hot(tf.zeros(tf.shape(x)[0], tf.int32), 3)

    table = robustness.robustness_table(predict, images, labels)
    upscale = next(name for name in robustness.CORRUPTIONS if "upscale" in name)
    assert table[upscale] is None
    assert table["clean"] == table["JPEG quality 30"] == 1.0
