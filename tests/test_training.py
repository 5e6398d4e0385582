"""The training package: loaders, splits, models, the export contract and the CLI, on tiny data."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from deployments import jpeg_image_model, self_labelled_photos
from payloads import jpeg, png
from payloads import random_images as _images
from PIL import Image

from training import cifar10, data, export, fastpath, iris
from training.cli import main as train_main

CLASSES = ["cat", "dog", "frog"]


def _class_folder_tar(path, per_class=4, with_test=False, encode=png):
    """`cifar10/train/<class>/<n>.png` (and `cifar10/test/...`) in a .tar.gz, like ../shared."""
    splits = ["train", "test"] if with_test else ["train"]
    with tarfile.open(path, "w:gz") as tar:
        for split in splits:
            for c, cls in enumerate(CLASSES):
                for i, img in enumerate(_images(per_class, seed=c)):
                    blob = encode(img)
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{i:04d}.{encode.__name__}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    return path


def _pickle_batches(folder, per_batch=6):
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        images = _images(per_batch, seed=len(name))
        batch = {
            b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1),
            b"labels": [i % len(CLASSES) for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_SERVING_CACHE", str(tmp_path / "cache"))


# --- data ------------------------------------------------------------------------------------


def test_class_folder_archive_loads_pixels_and_labels_exactly(tmp_path):
    archive = _class_folder_tar(tmp_path / "tiny.tar.gz", per_class=10)
    ds = data.load_cifar10(str(archive), validation_fraction=0.2)
    assert ds.labels == CLASSES
    assert ds.test is None
    assert len(ds.train.x) == 24 and len(ds.validation.x) == 6
    assert np.bincount(ds.validation.y).tolist() == [2, 2, 2]  # stratified
    # PNG is lossless: every loaded image is one of the generated ones, under its own class.
    originals = {c: _images(10, seed=c) for c in range(3)}
    for x, y in zip(ds.train.x, ds.train.y, strict=True):
        assert any(np.array_equal(x, o) for o in originals[y])


def test_class_folder_test_split_becomes_the_test_set(tmp_path):
    archive = _class_folder_tar(tmp_path / "tiny.tar.gz", per_class=10, with_test=True)
    ds = data.load_cifar10(str(archive), validation_fraction=0.2)
    assert ds.test is not None and len(ds.test.x) == 30


def test_pickle_batches_folder_and_archive_give_the_same_arrays(tmp_path):
    folder = _pickle_batches(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    a = data.load_cifar10(str(folder), validation_fraction=0.5)
    b = data.load_cifar10(str(archive), validation_fraction=0.5)
    assert a.labels == b.labels == CLASSES
    assert len(a.train.x) + len(a.validation.x) == 12 and len(a.test.x) == 6
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.x[0], _images(6, seed=len("test_batch"))[0])


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    archive = _class_folder_tar(tmp_path / "tiny.tar.gz")
    first = data.load_cifar10(str(archive))
    monkeypatch.setattr(data, "_read_cifar_source", lambda path: pytest.fail("decoded twice"))
    second = data.load_cifar10(str(archive))
    np.testing.assert_array_equal(first.train.x, second.train.x)


def test_the_jpeg_compression_of_training_images_is_recognised(tmp_path):
    jpegs = data.load_cifar10(str(_class_folder_tar(tmp_path / "j.tar.gz", encode=jpeg)))
    assert jpegs.jpeg == {"quality": 75, "chroma_subsampled": True}
    assert data.load_cifar10(str(_class_folder_tar(tmp_path / "p.tar.gz"))).jpeg is None


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset"):
        data.load_cifar10(str(tmp_path / "nowhere.tar.gz"))


def test_stratified_split_is_disjoint_complete_and_proportional():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    parts = data.stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    indices = np.concatenate(parts)
    assert len(indices) == len(set(indices.tolist())) == len(y)  # pairwise disjoint, nothing twice
    assert set(indices.tolist()) == set(range(len(y)))  # every example somewhere
    for part, fraction in zip(parts, (0.8, 0.1, 0.1), strict=True):
        assert np.bincount(y[part], minlength=3).tolist() == [round(fraction * n) for n in (50, 30, 20)]
    again = data.stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # seeded


def test_iris_split_is_80_10_10_stratified():
    ds = data.load_iris(seed=0)
    assert ds.labels == ["setosa", "versicolor", "virginica"]
    assert (len(ds.train.x), len(ds.validation.x), len(ds.test.x)) == (120, 15, 15)
    assert np.bincount(ds.test.y).tolist() == np.bincount(ds.validation.y).tolist() == [5, 5, 5]


# --- models ----------------------------------------------------------------------------------

SMALL = cifar10.Recipe(widths=(8, 16, 16), batch_size=32, epochs=1)


def test_cifar10_model_maps_raw_uint8_images_to_probabilities():
    images = _images(64)
    model = cifar10.build_model(SMALL, images, num_classes=10)
    probs = model(images[:5], training=False).numpy()
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert model.inputs[0].dtype == "uint8"
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 3


def test_whitening_kernel_decorrelates_patches():
    images = np.random.default_rng(1).integers(0, 256, (200, 32, 32, 3)).astype(np.uint8)
    images[..., 1] = images[..., 0] // 2 + images[..., 1] // 2  # correlated channels
    mean, std = images.reshape(-1, 3).mean(0) / 255, images.reshape(-1, 3).std(0) / 255
    kernel = cifar10.whitening_kernel(images, mean, std, eps=0)
    x = tf.constant(((images / 255 - mean) / std).astype(np.float32))
    out = tf.nn.conv2d(x, kernel[..., :12], 1, "VALID").numpy().reshape(-1, 12)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(12), atol=0.05)


def test_a_forced_flip_is_an_exact_mirror():
    images = _images(4)
    out, _ = cifar10.augment(tf.constant(images), tf.zeros(4), translate=0, flip=tf.constant([True] * 4))
    np.testing.assert_array_equal(out.numpy(), images[:, :, ::-1])
    unflipped, _ = cifar10.augment(
        tf.constant(images), tf.zeros(4), translate=0, flip=tf.constant([False] * 4)
    )
    np.testing.assert_array_equal(unflipped.numpy(), images)


def test_augmentation_flips_and_translates_without_changing_content():
    images = tf.constant(_images(16))
    keras.utils.set_random_seed(0)
    out, _ = cifar10.augment(images, tf.zeros(16), translate=2)
    assert not np.array_equal(out.numpy(), images.numpy())  # not the identity
    assert out.shape == images.shape and out.dtype == tf.uint8
    # A 2-pixel translation of a (possibly mirrored) image keeps its central 28x28 somewhere.
    for a, b in zip(images.numpy(), out.numpy(), strict=True):
        centre = b[2:30, 2:30]
        candidates = [
            img[2 + dy : 30 + dy, 2 + dx : 30 + dx]
            for img in (a, a[:, ::-1])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        assert any(np.array_equal(centre, c) for c in candidates)


def test_exported_inputs_go_through_the_training_images_jpeg_compression():
    images = _images(4)
    like_pillow = np.stack([np.asarray(Image.open(io.BytesIO(jpeg(img)))) for img in images])
    round_trip = cifar10.jpeg_round_trip(tf.constant(images), 75, True).numpy()
    np.testing.assert_array_equal(round_trip, like_pillow)  # same libjpeg, tables and IDCT
    model = cifar10.build_model(SMALL, images, num_classes=10)
    predict = cifar10.predict_fn(model, SMALL, jpeg={"quality": 75, "chroma_subsampled": True})
    np.testing.assert_allclose(predict(tf.constant(images)), model(round_trip, training=False), atol=1e-6)


def test_schedule_warms_up_then_decays():
    schedule = cifar10.TriangularSchedule(1.0, 100, start=0.2, peak_at=0.25, end=0.1)
    values = [float(schedule(s)) for s in (0, 25, 100)]
    assert values == pytest.approx([0.2, 1.0, 0.1])


# --- export contract -------------------------------------------------------------------------


def test_export_round_trip_gives_the_in_memory_models_outputs_deterministically(tmp_path):
    images = _images(64)
    model = cifar10.build_model(SMALL, images, num_classes=10)
    predict = cifar10.predict_fn(model, SMALL)
    meta = {"labels": [str(i) for i in range(10)], "metrics": {}, "training": {}}
    spec = {"name": "image", "shape": [32, 32, 3], "dtype": "uint8"}
    path = export.export_model(model, predict, tmp_path, "cifar10", spec, meta)

    assert path == tmp_path / "cifar10" / "1"
    assert (path / "saved_model.pb").exists() and (path / "variables").is_dir()
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    batch = tf.constant(images[:8])
    first = serve(image=batch)["probabilities"].numpy()
    np.testing.assert_array_equal(first, serve(image=batch)["probabilities"].numpy())
    np.testing.assert_allclose(first, predict(batch).numpy(), atol=1e-5)
    np.testing.assert_allclose(first.sum(1), 1, atol=1e-5)

    metadata = export.load_metadata(path)
    assert metadata["name"] == "cifar10" and metadata["version"] == "1"
    assert metadata["input"] == {"name": "image", "shape": [None, 32, 32, 3], "dtype": "uint8"}
    assert metadata["output"]["shape"] == [None, 10]


def test_a_new_export_is_the_next_version_and_leaves_older_ones_alone(tmp_path):
    features = np.random.default_rng(0).normal(5, 1, (20, 4)).astype(np.float32)
    model = iris.build_model(iris.Recipe(), features, 3)
    spec = {"name": "features", "shape": [4], "dtype": "float32"}
    meta = {"labels": ["a", "b", "c"], "metrics": {}, "training": {}}
    first = export.export_model(model, model, tmp_path, "iris", spec, meta)
    before = (first / "saved_model.pb").read_bytes()
    (tmp_path / "iris" / "7").mkdir()
    second = export.export_model(model, model, tmp_path, "iris", spec, meta)
    assert second.name == "8"
    assert (first / "saved_model.pb").read_bytes() == before
    assert not [p for p in (tmp_path / "iris").iterdir() if p.name.startswith(".")]


# --- CLI end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10_run(tmp_path_factory):
    """`python -m training cifar10` run once on a tiny archive, in mixed_bfloat16 (what `auto`
    picks on a CPU with native bfloat16): (archive, export, the policy before, the policy after)."""
    root = tmp_path_factory.mktemp("cifar10-cli")
    archive = _class_folder_tar(root / "tiny.tar.gz", per_class=20)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_SERVING_CACHE", str(root / "cache"))
        patch.setattr(cifar10, "Recipe", lambda: SMALL)  # the full-width net is for real runs
        before = keras.mixed_precision.global_policy().name
        try:
            args = ["--data", str(archive), "--epochs", "1", "--precision", "mixed_bfloat16"]
            train_main(["cifar10", *args, "--out", str(root / "models")])
            after = keras.mixed_precision.global_policy().name
        finally:
            keras.mixed_precision.set_global_policy("float32")  # for the tests after, if it failed
    return archive, root / "models" / "cifar10" / "1", before, after


def test_cifar10_cli_trains_exports_and_reports_on_a_tiny_dataset(cifar10_run):
    archive, version, _, _ = cifar10_run
    meta = export.load_metadata(version)
    assert meta["labels"] == CLASSES
    assert meta["training"]["command"].startswith("python -m training cifar10 --data")
    # The recorded accuracy is the export's own, on the validation split the CLI held out.
    validation = data.load_cifar10(str(archive)).validation
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    predicted = serve(image=tf.constant(validation.x))["probabilities"].numpy().argmax(1)
    recorded = meta["metrics"]["validation"]
    assert recorded["examples"] == len(validation.y)
    assert recorded["accuracy"] == round(float(np.mean(predicted == validation.y)), 4)
    for report in ["metrics.json", "learning_curves.png", "confusion_matrix.png"]:
        assert (version / "assets.extra" / report).stat().st_size > 0
    metrics = json.loads((version / "assets.extra" / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == meta["metrics"]["validation"]["examples"]


def test_the_cli_restores_the_precision_policy_it_found(cifar10_run):
    _, version, before, after = cifar10_run
    assert before == "float32"
    assert export.load_metadata(version)["training"]["precision"] == "mixed_bfloat16"
    assert after == "float32"


@pytest.fixture(scope="module")
def iris_trained(tmp_path_factory):
    """`python -m training iris --epochs 2` run once (eleven small networks: the model and its
    ten cross-validation folds): its export, for the tests that only read it."""
    out = tmp_path_factory.mktemp("iris-training")
    train_main(["iris", "--epochs", "2", "--out", str(out)])
    return out / "iris" / "1"


def test_iris_cli_reports_test_and_cross_validated_accuracy(iris_trained):
    meta = export.load_metadata(iris_trained)
    assert meta["input"]["feature_names"] == data.IRIS_FEATURES
    assert meta["metrics"]["test"]["examples"] == 15
    assert len(meta["metrics"]["cross_validation"]["fold_accuracies"]) == 10


def test_iris_training_calibrates_on_out_of_fold_predictions_and_writes_its_card(iris_trained):
    version = iris_trained
    meta = export.load_metadata(version)
    assert meta["calibration"]["fitted_on"].startswith("cross_validation")
    assert meta["calibration"]["before"]["accuracy"] == meta["metrics"]["cross_validation"]["mean_accuracy"]
    features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    served = signature(features=tf.constant(features))["probabilities"].numpy()
    np.testing.assert_allclose(served.sum(1), 1, atol=1e-5)
    assert "## Robustness" not in (version / meta["card"]).read_text()  # images only
    assert (version / "assets.extra" / "reliability_after.png").stat().st_size > 0


# --- the fast form (training.fastpath) -------------------------------------------------------


@pytest.mark.parametrize(
    ("fast", "refused"),
    [
        ({"accuracy": 0.899, "ece": 0.015}, None),  # 0.1 point lower, ECE 0.005 higher: the limits
        ({"accuracy": 0.8989, "ece": 0.010}, "accuracy 0.8989 against the SavedModel's 0.9000"),
        ({"accuracy": 0.905, "ece": 0.0151}, "ECE 0.0151 against the SavedModel's 0.0100"),
    ],
)
def test_the_fast_form_is_refused_when_it_loses_accuracy_or_calibration(fast, refused):
    figures = {"savedmodel": {"accuracy": 0.9, "ece": 0.01}, fastpath.NAME: fast}
    why = fastpath.verdict(figures)
    assert why == refused if refused is None else why.startswith(refused)


def test_a_fast_form_that_answers_otherwise_is_not_declared_and_nothing_is_written(tmp_path, monkeypatch):
    path = jpeg_image_model(tmp_path, seed=6)
    before = (path / "assets.extra" / "metadata.json").read_text()
    other = jpeg_image_model(tmp_path / "other", seed=7)  # another network: a broken conversion
    convert = fastpath.convert
    monkeypatch.setattr(fastpath, "convert", lambda version_dir, signature: convert(other, signature))
    with pytest.raises(fastpath.Refused, match=r"^accuracy 0\.\d+ against the SavedModel's 1\.0000"):
        fastpath.add_fast_form(path, self_labelled_photos(path), "pytest")
    assert not (path / "tflite-int8").exists()
    assert (path / "assets.extra" / "metadata.json").read_text() == before


def test_the_fast_form_is_the_graph_after_its_jpeg_round_trip_with_every_output(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    path = jpeg_image_model(tmp_path, seed=6)
    entry = fastpath.add_fast_form(path, self_labelled_photos(path), "pytest")
    assert entry["outputs"] == ["probabilities"] and entry["includes_jpeg_round_trip"] is False
    assert entry["evaluation"]["examples"] == 200 and entry["command"] == "pytest"
    assert export.load_metadata(path)["runtimes"]["tflite-int8"] == entry
    runner = Interpreter(str(path / entry["path"])).get_signature_runner()
    assert runner.get_input_details()["image"]["dtype"] == np.uint8

    noise = _images(8)  # what a JPEG round trip changes most
    saved = tf.saved_model.load(str(path)).signatures["serving_default"](image=tf.constant(noise))
    saved = saved["probabilities"].numpy()
    round_tripped = cifar10.jpeg_round_trip(tf.constant(noise), 75, True).numpy()
    after = runner(image=round_tripped)["probabilities"]  # fed what the graph's network sees
    without = runner(image=noise)["probabilities"]
    np.testing.assert_allclose(after.sum(1), 1, atol=1e-5)
    assert np.abs(after - saved).max() < np.abs(without - saved).max() / 2
