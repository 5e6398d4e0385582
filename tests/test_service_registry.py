"""Loading, readiness, broken and missing models, pinned versions and hot reload."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from deployments import install, offline, publish, service_settings, serving, wait_for
from payloads import png
from payloads import random_images as images

from service import registry as registry_module
from service.metrics import Metrics
from service.predictor import Predictor
from service.registry import ModelRegistry
from training.data import CIFAR10_LABELS

IMAGE = png(images(1, seed=3)[0])
FEATURES = {"features": [5.1, 3.5, 1.4, 0.2]}


def models_by_name(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def break_saved_model(version_dir):
    (version_dir / "saved_model.pb").write_bytes(b"not a protobuf")


def break_metadata_labels(version_dir):
    path = version_dir / "assets.extra" / "metadata.json"
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "labels": ["a", "b", "c"]}))  # the model has 10 outputs


def remove_metadata(version_dir):
    (version_dir / "assets.extra" / "metadata.json").unlink()


def drop_metadata_input(version_dir):
    path = version_dir / "assets.extra" / "metadata.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "input"}))


def truncate_metadata(version_dir):
    path = version_dir / "assets.extra" / "metadata.json"
    path.write_text(path.read_text()[:40])


def test_not_ready_until_every_model_is_loaded_and_warmed_up(model_dir, monkeypatch):
    gate = threading.Event()
    warmed: list[tuple[str, list[int]]] = []
    load, warm_up = registry_module.load_predictor, Predictor.warm_up

    def held_load(*args):
        gate.wait(30)
        return load(*args)

    def recorded_warm_up(self, sizes):
        warm_up(self, sizes)
        warmed.append((self.name, sizes))

    monkeypatch.setattr(registry_module, "load_predictor", held_load)
    monkeypatch.setattr(Predictor, "warm_up", recorded_warm_up)
    with serving(model_dir, ready=False) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        response = client.get("/readyz")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["ready"] is False
        assert wait_for(lambda: client.get("/readyz").json()["models"]) == {
            "cifar10": "loading",
            "iris": "loading",
        }
        refused = client.post("/predict/iris", json=FEATURES)
        assert refused.status_code == 503 and "loading" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        refused = client.post("/predict/image", files={"file": IMAGE})  # the default image model
        assert refused.status_code == 503 and refused.json()["detail"] == "no image model is ready"
        assert warmed == []
        gate.set()
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert sorted(warmed) == [("cifar10", [1, 8, 16]), ("iris", [1, 8, 16])]
        assert client.get("/readyz").json() == {
            "ready": True,
            "detail": "all models ready",
            "models": {"cifar10": "ready", "iris": "ready"},
        }


def test_with_several_workers_a_loading_worker_is_alive_and_holds_requests_until_loaded(
    model_dir, monkeypatch
):
    """Workers share the listening socket: one still loading answers /healthz (and /metrics) at
    once, but must not answer "loading" to a request another, ready worker could have had; it
    holds it until its models are loaded. (One worker says "loading": above.)"""
    gate = threading.Event()
    load = registry_module.load_predictor

    def held_load(*args):
        gate.wait(30)
        return load(*args)

    monkeypatch.setattr(registry_module, "load_predictor", held_load)
    try:
        with serving(model_dir, ready=False, workers=2) as client, ThreadPoolExecutor(2) as clients:
            assert client.get("/healthz").status_code == 200
            assert client.get("/metrics").status_code == 200
            held = [
                clients.submit(client.get, "/readyz"),
                clients.submit(client.post, "/predict/iris", json=FEATURES),
            ]
            # Both in the app and waiting (the scrape counts itself too), none answered.
            wait_for(lambda: "http_requests_in_flight 3.0" in client.get("/metrics").text)
            assert not any(answer.done() for answer in held)
            gate.set()
            assert [answer.result(timeout=60).status_code for answer in held] == [200, 200]
    finally:
        gate.set()


def test_models_describes_what_is_live(client, exports):
    metadata = json.loads((exports["cifar10"] / "assets.extra" / "metadata.json").read_text())
    cifar10 = models_by_name(client)["cifar10"]
    assert cifar10 == {
        "name": "cifar10",
        "ready": True,
        "status": "ready",
        "live_version": "1",
        "versions": ["1"],
        "pinned_version": None,
        "rejected_versions": {},
        "kind": "image",
        "device": "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0",  # DEVICE=auto
        "runtime": "savedmodel",  # the fixture's exports declare no fast form
        "tta": "none",
        "labels": CIFAR10_LABELS,
        "input": metadata["input"],
        "output": metadata["output"],
        "metrics": metadata["metrics"],
        "temperature": None,  # the fixture's exports are uncalibrated
        "validation_ece": None,
        "card": None,
    }
    assert models_by_name(client)["iris"]["input"]["feature_names"] == metadata_features(exports)


def metadata_features(exports):
    return json.loads((exports["iris"] / "assets.extra" / "metadata.json").read_text())["input"][
        "feature_names"
    ]


def test_each_model_is_batched_as_the_settings_say(model_dir):
    settings = {"max_batch_size": 12, "max_batch_wait_ms": 40, "max_queue_size": 96}
    with serving(model_dir, **settings) as client:
        for served in client.app.state.registry.models.values():
            batcher = served.batcher
            assert (batcher.max_batch_size, batcher.max_wait_s, batcher.max_queue_size) == (12, 0.04, 96)


def make_a_file(path):
    path.write_text("not a folder")


def make_unreadable(path, monkeypatch):
    path.mkdir()
    iterdir = registry_module.Path.iterdir

    def refused(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(registry_module.Path, "iterdir", refused)  # root reads any folder


@pytest.mark.parametrize(
    "make, problem",
    [
        (None, "does not exist"),
        (make_a_file, "is not a folder"),
        (make_unreadable, "cannot be read: Permission denied"),
    ],
)
def test_a_missing_or_unreadable_model_dir_is_one_clear_message_and_not_ready(
    tmp_path, make, problem, monkeypatch, caplog
):
    root, scans = tmp_path / "models", []
    if make is make_unreadable:
        make(root, monkeypatch)
    elif make is not None:
        make(root)
    scan = registry_module.ModelRegistry._scan
    monkeypatch.setattr(registry_module.ModelRegistry, "_scan", lambda *args: scans.append(1) or scan(*args))
    with serving(root, ready=False, poll_interval_s=0.02) as client:
        assert client.get("/healthz").status_code == 200
        wait_for(lambda: len(scans) >= 5)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["detail"] == f"MODEL_DIR {root} {problem}"
        assert client.post("/predict/iris", json=FEATURES).status_code == 404
        assert client.post("/predict/image", files={"file": IMAGE}).status_code == 404
    logged = [r for r in caplog.records if r.levelname in ("ERROR", "WARNING", "CRITICAL")]
    assert [r.getMessage() for r in logged] == [f"MODEL_DIR {root} {problem}: no models to serve"]
    assert logged[0].exc_info is None  # a message, not a traceback


def test_model_dir_unreadable_after_start_keeps_the_models_loaded_and_says_so(model_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=registry_module.__name__)
    with serving(model_dir, poll_interval_s=0.02) as client:
        iterdir = registry_module.Path.iterdir
        monkeypatch.setattr(
            registry_module.Path,
            "iterdir",
            lambda self: (
                (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                if self == model_dir
                else iterdir(self)
            ),
        )
        body = wait_for(lambda: "cannot be read" in (r := client.get("/readyz").json())["detail"] and r)
        assert body["ready"] is True and body["models"] == {"cifar10": "ready", "iris": "ready"}
        assert client.post("/predict/iris", json=FEATURES).status_code == 200
        monkeypatch.setattr(registry_module.Path, "iterdir", iterdir)
        wait_for(lambda: client.get("/readyz").json()["detail"] == "all models ready")
    messages = [r.getMessage() for r in caplog.records if r.name == registry_module.__name__]
    assert [m for m in messages if "MODEL_DIR" in m] == [
        f"MODEL_DIR {model_dir} cannot be read: Permission denied: serving the models loaded, unchanged,"
        " until it can be read",
        f"MODEL_DIR {model_dir} can be read again",
    ]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (None, "no version folder"),
        (break_saved_model, "version 1 failed to load"),
        (remove_metadata, "version 1 failed to load: no assets.extra/metadata.json"),
        (drop_metadata_input, "metadata.json does not describe a servable model: input: Field required"),
        (truncate_metadata, "metadata.json does not describe a servable model: file: Invalid JSON"),
    ],
)
def test_a_broken_model_is_named_and_the_others_still_serve(model_dir, damage, reason, caplog):
    """A model with no loadable version is reported, and never takes the replica's readiness
    hostage: the model that loads is served, and the replica is ready."""
    iris = model_dir / "iris"
    if damage is None:
        shutil.rmtree(iris / "1")
    else:
        damage(iris / "1")
    with serving(model_dir, ready=False) as client:
        body = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json())
        assert reason in body["models"]["iris"] and body["models"]["cifar10"] == "ready"
        assert body["ready"] is True and body["detail"].startswith("not serving iris: ")
        assert client.get("/readyz").status_code == 200
        assert client.post("/predict/image", files={"file": IMAGE}).status_code == 200
        refused = client.post("/predict/iris", json=FEATURES)
        assert refused.status_code == 503 and reason in refused.json()["detail"]
        assert client.get("/v2/health/ready").status_code == 200
        refused = client.get("/v2/models/iris/ready")
        assert refused.status_code == 503 and reason in refused.json()["error"]
    if damage is not None:
        assert any("rejected iris version 1" in r.getMessage() for r in caplog.records)


def test_hidden_folders_are_not_versions(model_dir, caplog):
    staging = model_dir / "cifar10" / ".staging-2-1234"
    staging.mkdir()
    (staging / "saved_model.pb").write_bytes(b"half written")
    (model_dir / ".trash").mkdir()
    with serving(model_dir) as client:
        assert set(models_by_name(client)) == {"cifar10", "iris"}
        assert models_by_name(client)["cifar10"]["versions"] == ["1"]
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]  # hidden: not even logged


def test_the_default_image_model_is_the_first_image_model_by_name(tmp_path, exports):
    root = tmp_path / "models"
    install(exports["iris"], root, "aaa-flowers")  # a vector model sorts first
    install(exports["cifar10"], root, "cifar10")
    install(exports["wide"], root, "zzz-wide")
    with serving(root) as client:
        assert client.post("/predict/image", files={"file": IMAGE}).json()["model"] == "cifar10"


def test_closing_finishes_every_batcher_and_reports_no_failure(model_dir, caplog):
    with serving(model_dir) as client:
        assert client.post("/predict/iris", json=FEATURES).status_code == 200
        batchers = [m.batcher for m in client.app.state.registry.models.values()]
    assert len(batchers) == 2
    assert all(b.task.done() and not b.task.cancelled() and b.task.exception() is None for b in batchers)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_closing_stops_watching_the_model_folder(model_dir):
    async def start_then_close():
        registry = ModelRegistry(service_settings(model_dir, poll_interval_s=0.05), "/CPU:0", Metrics())
        registry.start()
        await registry.first_scan()
        await registry.close()
        await asyncio.sleep(0.2)  # several poll intervals
        return registry._watcher is not None and registry._watcher.cancelled()  # before run() ends

    assert asyncio.run(start_then_close())


def test_a_failing_scan_is_logged_and_the_next_one_serves(model_dir, monkeypatch, caplog):
    scan, failed = registry_module.ModelRegistry._scan, []

    def fails_once(self, *args):
        if not failed:
            failed.append(1)
            raise RuntimeError("a race with a deployment")
        return scan(self, *args)

    monkeypatch.setattr(registry_module.ModelRegistry, "_scan", fails_once)
    with serving(model_dir, poll_interval_s=0.05) as client:
        assert client.post("/predict/iris", json=FEATURES).status_code == 200
    assert any(r.getMessage().startswith("scanning ") and r.exc_info for r in caplog.records)


def test_stray_entries_are_skipped_and_logged_and_every_model_serves(model_dir, caplog):
    cifar10 = model_dir / "cifar10"
    for name in ("²", "٣", "2.tmp", "tmpabc123"):  # '²' and '٣' pass str.isdigit, not int()
        (cifar10 / name).mkdir()
    (cifar10 / "notes.txt").write_text("a file among the versions")
    (model_dir / "README.txt").write_text("a file among the models")
    with serving(model_dir) as client:
        assert client.get("/readyz").status_code == 200
        assert {name: m["versions"] for name, m in models_by_name(client).items()} == {
            "cifar10": ["1"],
            "iris": ["1"],
        }
        assert client.post("/predict/iris", json=FEATURES).status_code == 200
    skipped = " ".join(r.getMessage() for r in caplog.records if "skipping" in r.getMessage())
    for entry in ("cifar10/²", "cifar10/2.tmp", "cifar10/notes.txt", "README.txt"):
        assert repr(entry) in skipped


def test_a_model_folder_unreadable_this_scan_is_logged_without_host_paths_and_others_serve(
    model_dir, monkeypatch, caplog
):
    read = registry_module.existing_versions

    def unreadable_cifar10(path):
        if path.name == "cifar10":
            raise PermissionError(13, "Permission denied", str(path))
        return read(path)

    monkeypatch.setattr(registry_module, "existing_versions", unreadable_cifar10)
    with serving(model_dir) as client:
        assert set(models_by_name(client)) == {"iris"}
        assert client.post("/predict/iris", json=FEATURES).status_code == 200
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "skipping cifar10/ this scan: Permission denied" in errors
    assert not any(str(model_dir) in message for message in errors)


def test_rejected_versions_are_named_without_host_paths(model_dir):
    shutil.copytree(model_dir / "iris" / "1", model_dir / "iris" / "2")
    break_saved_model(model_dir / "iris" / "2")
    with serving(model_dir) as client:
        why = models_by_name(client)["iris"]["rejected_versions"]["2"]
        readiness = client.get("/readyz").text
    assert why and str(model_dir.parent) not in why and str(model_dir.parent) not in readiness


def test_newest_version_that_loads_is_served(model_dir, exports):
    install(exports["cifar10-v2"], model_dir, "cifar10", version=2)
    break_metadata_labels(install(exports["cifar10"], model_dir, "cifar10", version=3))
    with serving(model_dir) as client:
        cifar10 = models_by_name(client)["cifar10"]
        assert cifar10["live_version"] == "2" and cifar10["versions"] == ["1", "2", "3"]
        assert "output shape" in cifar10["rejected_versions"]["3"]
        assert client.post("/predict/image", files={"file": IMAGE}).json()["version"] == "2"


def test_pinned_version_stays_pinned(model_dir, exports):
    install(exports["cifar10-v2"], model_dir, "cifar10", version=2)
    with serving(model_dir, model_versions="cifar10=1", poll_interval_s=0.1) as client:
        assert models_by_name(client)["cifar10"]["live_version"] == "1"
        assert models_by_name(client)["cifar10"]["pinned_version"] == "1"
        publish(exports["cifar10-v2"], model_dir, 3)
        wait_for(lambda: "3" in models_by_name(client)["cifar10"]["versions"])
        wait_for(lambda: models_by_name(client)["cifar10"]["versions"] == ["1", "2", "3"])
        assert client.post("/predict/image", files={"file": IMAGE}).json()["version"] == "1"


def test_pinned_version_that_does_not_exist_is_not_ready(model_dir):
    with serving(model_dir, model_versions="cifar10=7", ready=False) as client:
        body = wait_for(lambda: (r := client.get("/readyz").json())["models"].get("iris") == "ready" and r)
        assert body["models"]["cifar10"].startswith("pinned version 7 not found")


def test_hot_reload_swaps_versions_under_load_without_failures(model_dir, exports):
    pixels = images(1, seed=11)
    with serving(model_dir, poll_interval_s=0.1) as client:
        stop = threading.Event()

        def hammer():
            answers = []
            while not stop.is_set():
                response = client.post("/predict/image", files={"file": png(pixels[0])})
                answers.append((response.status_code, response.json().get("version")))
            return answers

        with ThreadPoolExecutor(6) as pool:
            workers = [pool.submit(hammer) for _ in range(6)]
            wait_for(lambda: models_by_name(client)["cifar10"]["live_version"] == "1")
            publish(exports["cifar10-v2"], model_dir, 2)
            wait_for(
                lambda: client.post("/predict/image", files={"file": png(pixels[0])}).json()["version"] == "2"
            )
            threading.Event().wait(0.3)  # keep the load on after the swap
            stop.set()
            answers = [answer for worker in workers for answer in worker.result()]
        assert {status for status, _ in answers} == {200}
        assert {version for _, version in answers} == {"1", "2"}
        assert models_by_name(client)["cifar10"]["live_version"] == "2"
        body = client.post("/predict/image", files={"file": png(pixels[0])}).json()
        assert np.allclose(
            list(body["probabilities"].values()), offline(exports["cifar10-v2"], pixels)[0], atol=1e-5
        )


def test_each_version_is_loaded_once_however_many_scans_see_it(model_dir, monkeypatch):
    shutil.copytree(model_dir / "iris" / "1", model_dir / "iris" / "2")
    break_saved_model(model_dir / "iris" / "2")
    loads, scans = [], []
    load, scan = registry_module.load_predictor, registry_module.ModelRegistry._scan

    def counted_load(path, *args):
        loads.append(path.relative_to(model_dir).as_posix())
        return load(path, *args)

    monkeypatch.setattr(registry_module, "load_predictor", counted_load)
    monkeypatch.setattr(registry_module.ModelRegistry, "_scan", lambda *args: scans.append(1) or scan(*args))
    with serving(model_dir, model_versions="cifar10=1", poll_interval_s=0.05) as client:
        seen = len(scans)
        wait_for(lambda: len(scans) >= seen + 5)
        assert models_by_name(client)["iris"]["live_version"] == "1"
    # The rejected iris/2, unchanged, is not retried before its back-off (RETRY_FIRST_S), nor
    # the live, pinned cifar10/1 reloaded.
    assert sorted(loads) == ["cifar10/1", "iris/1", "iris/2"]


def test_the_log_says_how_long_a_version_took_to_load(model_dir, caplog):
    caplog.set_level(logging.INFO, logger=registry_module.__name__)
    started = time.perf_counter()
    with serving(model_dir):
        elapsed = time.perf_counter() - started
    took = [
        float(match.group(1))
        for r in caplog.records
        if (
            match := re.search(r"^serving \w+ version 1 .* loaded and warmed up in ([\d.]+)s", r.getMessage())
        )
    ]
    assert len(took) == 2 and all(0 <= seconds <= elapsed for seconds in took)


@pytest.mark.parametrize("damage", [break_saved_model, break_metadata_labels, remove_metadata])
def test_broken_new_version_is_rejected_and_the_old_keeps_serving(model_dir, exports, damage, caplog):
    with serving(model_dir, poll_interval_s=0.1) as client:
        broken = model_dir / "cifar10" / ".staging-2"
        shutil.copytree(exports["cifar10-v2"], broken)
        damage(broken)
        broken.rename(model_dir / "cifar10" / "2")
        cifar10 = wait_for(lambda: (m := models_by_name(client)["cifar10"])["rejected_versions"] and m)
        assert (
            cifar10["live_version"] == "1"
            and cifar10["ready"]
            and list(cifar10["rejected_versions"]) == ["2"]
        )
        assert client.get("/readyz").status_code == 200
        assert client.post("/predict/image", files={"file": IMAGE}).json()["version"] == "1"
        assert any(
            "rejected cifar10 version 2" in r.getMessage() and "still serving version 1" in r.getMessage()
            for r in caplog.records
        )
        publish(exports["cifar10-v2"], model_dir, 3)  # a fixed export, as a new version
        wait_for(lambda: models_by_name(client)["cifar10"]["live_version"] == "3")


def test_full_collections_walk_the_models_not_the_imports_and_a_replaced_version_is_reclaimed(
    model_dir, exports
):
    with serving(model_dir, poll_interval_s=0.1) as client:
        # TensorFlow's and the app's objects are frozen, out of every pass (400,000 and more).
        assert gc.get_freeze_count() > 100_000
        served = client.app.state.registry.models["cifar10"]
        first = served.predictor
        first.itself = first  # a reference cycle, as loaded TensorFlow objects can have
        replaced = weakref.ref(first)
        del first
        publish(exports["cifar10-v2"], model_dir, 2)
        wait_for(lambda: models_by_name(client)["cifar10"]["live_version"] == "2")
        gc.collect()  # the versions are left to the collector's passes: one reclaims the cycle
        assert wait_for(lambda: replaced() is None, timeout=10)
        assert id(served.predictor) in {id(o) for o in gc.get_objects()}
