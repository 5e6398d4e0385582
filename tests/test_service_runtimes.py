"""What computes a model's answers (service/runtimes.py): the SavedModel or the fast TFLite form its
export declares, picked per MODEL_RUNTIME, the JPEG round trip done exactly as the graph does it,
one set of interpreters per thread, and no reallocation once a batch size has been seen."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import interpreter as litert
from deployments import JPEG, fast_export, install, offline, serving
from payloads import photo, png, random_images
from PIL import Image

from model_repository import read_metadata
from service import runtimes
from service.predictor import Predictor, load_predictor
from service.runtimes import TFLiteRuntime, choose_runtime, jpeg_round_trip
from training import cifar10


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A tiny cifar10 export with its TFLite int8 form declared."""
    return fast_export(tmp_path_factory.mktemp("fast"))


def photos(count: int, first: int = 0) -> np.ndarray:
    return np.stack([np.asarray(photo(first + i)) for i in range(count)])


@pytest.mark.parametrize(
    ("setting", "device", "chosen"),
    [
        ("auto", "/CPU:0", "tflite-int8"),  # the fast form where declared, on a CPU
        ("auto", "/GPU:0", "savedmodel"),  # never on a GPU
        ("savedmodel", "/CPU:0", "savedmodel"),
        ("tflite-int8", "/CPU:0", "tflite-int8"),
        ("tflite-int8", "/GPU:0", "tflite-int8"),  # asked for by name: wherever it is declared
        ("onnx-int8", "/CPU:0", "savedmodel"),  # a form the export does not declare
    ],
)
def test_model_runtime_picks_the_declared_fast_form_on_cpus_only(fast, setting, device, chosen):
    assert choose_runtime(setting, read_metadata(fast), device) == chosen


def test_an_export_without_a_fast_form_is_served_from_its_savedmodel(exports):
    assert choose_runtime("auto", read_metadata(exports["cifar10"]), "/CPU:0") == "savedmodel"
    assert Predictor(exports["cifar10"], "/CPU:0", "tflite-int8").runtime_name == "savedmodel"


def test_pillows_jpeg_round_trip_gives_the_graphs_pixels_bit_for_bit():
    images = np.concatenate([random_images(16, seed=3), photos(16)])
    in_graph = cifar10.jpeg_round_trip(tf.constant(images), JPEG["quality"], JPEG["chroma_subsampled"])
    np.testing.assert_array_equal(jpeg_round_trip(images, 75, True), in_graph.numpy())
    # and the declared subsampling is honoured, not assumed
    full_chroma = cifar10.jpeg_round_trip(tf.constant(images), 75, False).numpy()
    np.testing.assert_array_equal(jpeg_round_trip(images, 75, False), full_chroma)
    assert not np.array_equal(full_chroma, in_graph.numpy())


def test_the_fast_form_answers_every_declared_output_close_to_the_savedmodel(fast):
    images = photos(40, first=500)
    served = Predictor(fast, "/CPU:0")
    assert served.runtime_name == "tflite-int8"
    outputs = served.predict(images)
    assert sorted(outputs) == read_metadata(fast).runtimes["tflite-int8"].outputs == ["probabilities"]
    probabilities = outputs["probabilities"]
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-3)
    reference = offline(fast, images)
    assert np.abs(probabilities - reference).max() < 0.05
    assert np.mean(probabilities.argmax(1) == reference.argmax(1)) >= 0.95
    assert not np.array_equal(probabilities, reference)  # int8 really answers, not TensorFlow


def test_the_fast_form_without_its_jpeg_round_trip_would_answer_otherwise(fast):
    """The round trip the metadata declares is what makes the fast form match the SavedModel."""
    contract = read_metadata(fast)
    form = contract.runtimes["tflite-int8"]
    images = random_images(32, seed=9)  # noise: what JPEG changes most
    kept = TFLiteRuntime("tflite-int8", fast, form, contract).run(images)["probabilities"]
    skipped = TFLiteRuntime(
        "tflite-int8", fast, form.model_copy(update={"includes_jpeg_round_trip": True}), contract
    ).run(images)["probabilities"]
    reference = offline(fast, images)
    assert np.abs(kept - reference).max() < np.abs(skipped - reference).max()


def test_repeated_batch_sizes_allocate_nothing_more(fast):
    contract = read_metadata(fast)
    runtime = TFLiteRuntime("tflite-int8", fast, contract.runtimes["tflite-int8"], contract)
    sizes = [1, 5, 63, 128, 2, 64]  # 63: 32 + 16 + 8 + 4 + 2 + 1
    for size in sizes:
        runtime.run(photos(size))
    allocated = runtime.allocations
    assert allocated == len(runtimes.TFLiteRuntime.CHUNKS)  # one interpreter per chunk size, all seen
    for size in [*sizes, *reversed(sizes), 3, 100]:
        out = runtime.run(photos(size))["probabilities"]
        assert out.shape == (size, 10)
    assert runtime.allocations == allocated


def test_each_thread_computes_on_interpreters_of_its_own(fast, monkeypatch):
    contract = read_metadata(fast)
    runtime = TFLiteRuntime("tflite-int8", fast, contract.runtimes["tflite-int8"], contract)
    users: dict[int, set[int]] = {}
    made = runtime._interpreter

    def tracked(size):
        made_here = made(size)
        users.setdefault(id(made_here[0]), set()).add(threading.get_ident())
        return made_here

    monkeypatch.setattr(runtime, "_interpreter", tracked)
    images = photos(8)
    expected = runtime.run(images)["probabilities"]  # this thread: one interpreter, size 8
    runtime.warm_up(images)  # warm-up: interpreters it drops, never this thread's
    results = []
    worker = threading.Thread(target=lambda: results.append(runtime.run(images)["probabilities"]))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results[0], expected)
    assert runtime.allocations == 3  # this thread's, the warm-up's, the other thread's
    assert all(len(threads) == 1 for threads in users.values())
    runtime.run(images)
    assert runtime.allocations == 3  # this thread still has its own


@pytest.mark.parametrize("runtime", ["savedmodel", "tflite-int8"])
def test_flip_tta_averages_each_image_with_its_mirror(fast, runtime):
    images = photos(6, first=900)
    plain = Predictor(fast, "/CPU:0", runtime)
    flipped = Predictor(fast, "/CPU:0", runtime, tta="flip")

    def probabilities(predictor, batch):
        return predictor.predict(batch)[predictor.output_name]

    expected = (probabilities(plain, images) + probabilities(plain, images[:, :, ::-1])) / 2
    np.testing.assert_allclose(probabilities(flipped, images), expected, atol=1e-6)
    assert flipped.tta == "flip" and not np.allclose(
        probabilities(flipped, images), probabilities(plain, images)
    )


def test_warming_up_leaves_no_interpreter_behind_and_serving_keeps_its_own(fast):
    """Warm-up runs on a loading thread, which may later do other work: its interpreters are
    dropped; the thread that serves sets its own up once."""
    predictor = Predictor(fast, "/CPU:0", "tflite-int8")
    predictor.warm_up([1])
    warmed = predictor.runtime.allocations
    predictor.predict(photos(1))
    predictor.predict(photos(1))
    assert predictor.runtime.allocations == warmed + 1


def test_flip_tta_leaves_a_feature_models_answers_as_they_are(exports):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    plain = Predictor(exports["iris"], "/CPU:0")
    asked = Predictor(exports["iris"], "/CPU:0", tta="flip")  # TTA=flip is for images
    assert asked.tta == "none"
    np.testing.assert_array_equal(asked.predict(rows)["probabilities"], plain.predict(rows)["probabilities"])


@pytest.fixture
def interpreter_threads(monkeypatch) -> list[int | None]:
    """The `num_threads` each LiteRT interpreter made from now on was asked for."""
    asked: list[int | None] = []
    real = litert.Interpreter

    def interpreter(**options):
        asked.append(options.get("num_threads"))
        return real(**options)

    monkeypatch.setattr(litert, "Interpreter", interpreter)
    return asked


def test_a_predictor_runs_its_interpreters_on_one_thread_each_unless_told(fast, interpreter_threads):
    """One model call at a time per worker, and a worker per core (service/process/layout.py)."""
    load_predictor(fast, "/CPU:0", [1], "tflite-int8").predict(photos(2))
    Predictor(fast, "/CPU:0", "tflite-int8").predict(photos(2))
    assert interpreter_threads and set(interpreter_threads) == {1}


def test_the_service_loads_a_fast_form_with_one_interpreter_thread(fast, tmp_path, interpreter_threads):
    """A worker's model calls run one at a time, a worker per core: more threads would contend."""
    install(fast, tmp_path / "models")
    with serving(tmp_path / "models") as client:
        assert client.post("/predict/image", files={"file": pngs(1)[0]}).status_code == 200
    assert interpreter_threads and set(interpreter_threads) == {1}


def pngs(count: int) -> list[bytes]:
    return [png(np.asarray(photo(700 + i))) for i in range(count)]


def v2_pixels(client, pixels: np.ndarray) -> np.ndarray:
    shape, data = list(pixels.shape), pixels.ravel().tolist()
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": shape, "data": data}]}
    response = client.post("/v2/models/cifar10/infer", json=body)
    assert response.status_code == 200, response.text
    (probabilities,) = [o for o in response.json()["outputs"] if o["name"] == "probabilities"]
    return np.array(probabilities["data"], np.float32).reshape(probabilities["shape"])


@pytest.mark.parametrize(("setting", "answering"), [("auto", "tflite-int8"), ("savedmodel", "savedmodel")])
def test_every_door_says_and_answers_from_the_same_runtime(fast, tmp_path, setting, answering):
    install(fast, tmp_path / "models")
    files = pngs(6)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f))) for f in files])
    with serving(tmp_path / "models", model_runtime=setting) as client:
        (info,) = client.get("/models").json()["models"]
        assert info["runtime"] == answering
        platform = client.get("/v2/models/cifar10").json()["platform"]
        assert platform == ("tflite" if answering != "savedmodel" else "tensorflow_savedmodel")
        assert client.get("/v1/models/cifar10/metadata").json()["metadata"]["runtime"] == answering

        native = client.post("/predict/image", files=[("file", f) for f in files]).json()["predictions"]
        native = np.array([list(p["probabilities"].values()) for p in native], np.float32)
        v2 = v2_pixels(client, pixels)
        np.testing.assert_allclose(v2, native, rtol=1e-5, atol=1e-7)
        tf_serving = client.post("/v1/models/cifar10:predict", json={"instances": pixels.tolist()})
        np.testing.assert_allclose(tf_serving.json()["predictions"], native, rtol=1e-5, atol=1e-7)

        contract = read_metadata(fast)
        if answering == "savedmodel":
            np.testing.assert_allclose(v2, offline(fast, pixels), rtol=1e-4, atol=1e-6)
        else:
            own = TFLiteRuntime(answering, fast, contract.runtimes[answering], contract).run(pixels)
            np.testing.assert_allclose(v2, own["probabilities"], rtol=1e-5, atol=1e-7)
            assert not np.allclose(v2, offline(fast, pixels), rtol=1e-4, atol=1e-6)


def test_a_rows_answer_does_not_depend_on_the_rows_batched_with_it(fast):
    """Activations are quantized per row, so chunking a batch (or batching requests) changes nothing."""
    contract = read_metadata(fast)
    runtime = TFLiteRuntime("tflite-int8", fast, contract.runtimes["tflite-int8"], contract)
    images = np.concatenate([photos(20, first=300), random_images(17, seed=4)])  # 37: 32 + 4 + 1
    together = runtime.run(images)["probabilities"]
    alone = np.concatenate([runtime.run(images[i : i + 1])["probabilities"] for i in range(len(images))])
    np.testing.assert_array_equal(together, alone)
