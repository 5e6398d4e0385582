"""The model repository is the source of truth: each change on disk (a folder appearing or
going, a version written slowly, deleted, broken then fixed, a model moved away and back)
followed through every door, per model, without making the replica unready or stalling the
event loop."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from deployments import (
    HELD_ROWS,
    held_feature_model,
    install,
    open_gate,
    publish,
    service_settings,
    serving,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from payloads import png
from payloads import random_images as images
from served import free_port

from service import registry as registry_module
from service.metrics import Metrics
from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.third_party import tensorflow_serving_pb2 as tfs

IMAGE = png(images(1, seed=5)[0])
FEATURES = {"features": [5.1, 3.5, 1.4, 0.2]}
POLL_S = 0.05
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def served(model_dir):
    """The app over a MODEL_DIR this test changes, rescanned every POLL_S, with its gRPC
    server: (client, channel, model_dir)."""
    port = free_port()
    with (
        serving(model_dir, poll_interval_s=POLL_S, grpc_port=port) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        wait_for(lambda: health(channel, "") == SERVING)
        yield client, channel, model_dir


def rpc(channel, path: str, request, response_type):
    return channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )(request, timeout=30)


def rpc_code(channel, path: str, request, response_type) -> grpc.StatusCode:
    try:
        rpc(channel, path, request, response_type)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def health(channel, service: str) -> int | grpc.StatusCode:
    """The service's health, or NOT_FOUND for a name health has never been told of."""
    try:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status
        )
    except grpc.RpcError as error:
        return error.code()


def models(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def readyz_stays_200(client, stop: threading.Event) -> list[int]:
    """/readyz's status at every sample until `stop` (run it beside a test's changes)."""
    statuses = []
    while not stop.is_set():
        statuses.append(client.get("/readyz").status_code)
        time.sleep(0.01)
    return statuses


def iris_on_every_door(client, channel) -> dict[str, int | grpc.StatusCode]:
    """What model iris answers on each door: native, v2 and TF Serving REST, v2 and TF Serving
    gRPC (inference and status), and gRPC health by its name."""
    features = np.array([FEATURES["features"]], np.float32)
    v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FEATURES["features"]}]}
    infer = oip.ModelInferRequest(model_name="iris")
    infer.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    infer.raw_input_contents.append(features.tobytes())
    tensor = tf.make_tensor_proto(features)
    predict = tfs.PredictRequest(model_spec=tfs.ModelSpec(name="iris"), inputs={"features": tensor})
    status = tfs.GetModelStatusRequest(model_spec=tfs.ModelSpec(name="iris"))
    return {
        "native": client.post("/predict/iris", json=FEATURES).status_code,
        "v2 infer": client.post("/v2/models/iris/infer", json=v2).status_code,
        "v2 ready": client.get("/v2/models/iris/ready").status_code,
        "v2 metadata": client.get("/v2/models/iris").status_code,
        "tfserving predict": client.post(
            "/v1/models/iris:predict", json={"instances": [FEATURES["features"]]}
        ).status_code,
        "tfserving status": client.get("/v1/models/iris").status_code,
        "grpc v2 infer": rpc_code(
            channel, "/inference.GRPCInferenceService/ModelInfer", infer, oip.ModelInferResponse
        ),
        "grpc tfserving predict": rpc_code(
            channel, "/tensorflow.serving.PredictionService/Predict", predict, tfs.PredictResponse
        ),
        "grpc tfserving status": rpc_code(
            channel, "/tensorflow.serving.ModelService/GetModelStatus", status, tfs.GetModelStatusResponse
        ),
        "grpc health": health(channel, "iris"),
    }


SERVED_EVERYWHERE = {
    **dict.fromkeys(
        ["native", "v2 infer", "v2 ready", "v2 metadata", "tfserving predict", "tfserving status"], 200
    ),
    **dict.fromkeys(["grpc v2 infer", "grpc tfserving predict", "grpc tfserving status"], grpc.StatusCode.OK),
    "grpc health": SERVING,
}
GONE_EVERYWHERE = {
    **dict.fromkeys(
        ["native", "v2 infer", "v2 ready", "v2 metadata", "tfserving predict", "tfserving status"], 404
    ),
    **dict.fromkeys(
        ["grpc v2 infer", "grpc tfserving predict", "grpc tfserving status"], grpc.StatusCode.NOT_FOUND
    ),
    "grpc health": NOT_SERVING,
}


def test_an_empty_model_folder_appearing_and_going_never_makes_the_replica_unready(served):
    client, channel, model_dir = served
    stop = threading.Event()
    with ThreadPoolExecutor(1) as sampler:
        readyz = sampler.submit(readyz_stays_200, client, stop)
        try:
            (model_dir / "newcomer").mkdir()
            wait_for(lambda: "newcomer" in models(client))
            assert models(client)["newcomer"]["status"] == "no version folder in newcomer/"
            body = client.get("/readyz").json()
            assert body["ready"] and body["detail"] == "not serving newcomer: no version folder in newcomer/"
            assert client.get("/v2/health/ready").status_code == 200
            assert client.get("/v2/models/newcomer/ready").status_code == 503
            assert client.get("/v1/models/newcomer").json() == {"model_version_status": [], "ready": False}
            wait_for(lambda: health(channel, "newcomer") == NOT_SERVING)
            assert health(channel, "") == SERVING
            (model_dir / "newcomer").rmdir()
            wait_for(lambda: "newcomer" not in models(client))
            assert client.get("/v2/models/newcomer/ready").status_code == 404
            assert client.get("/readyz").json()["detail"] == "all models ready"
        finally:
            stop.set()
        assert set(readyz.result()) == {200}


def test_a_version_read_while_it_was_written_is_served_once_complete(served, exports):
    """metadata.json first, the SavedModel later: rejected while incomplete (and said so on
    every status door), then retried because its files changed, and served."""
    client, channel, model_dir = served
    version = model_dir / "cifar10" / "2"
    (version / "assets.extra").mkdir(parents=True)
    shutil.copy(exports["cifar10-v2"] / "assets.extra" / "metadata.json", version / "assets.extra")
    cifar10 = wait_for(lambda: (m := models(client)["cifar10"])["rejected_versions"] and m)
    why = cifar10["rejected_versions"]["2"]
    assert "SavedModel file does not exist" in why and cifar10["live_version"] == "1"
    status = client.get("/v1/models/cifar10/versions/2").json()["model_version_status"][0]
    assert status["state"] == "END" and status["status"]["error_message"] == why
    assert health(channel, "cifar10") == SERVING  # version 1 still serves
    shutil.copytree(exports["cifar10-v2"], version, dirs_exist_ok=True)  # the rest of the export
    wait_for(lambda: models(client)["cifar10"]["live_version"] == "2")
    assert models(client)["cifar10"]["rejected_versions"] == {}
    assert client.post("/predict/image", files={"file": IMAGE}).json()["version"] == "2"


def test_a_corrupt_version_fixed_in_place_is_retried(served, exports):
    client, channel, model_dir = served
    staging = model_dir / "cifar10" / ".staging-2"
    shutil.copytree(exports["cifar10-v2"], staging)
    (staging / "saved_model.pb").write_bytes(b"not a protobuf")
    staging.rename(model_dir / "cifar10" / "2")
    wait_for(lambda: models(client)["cifar10"]["rejected_versions"])
    assert client.get("/v2/models/cifar10/versions/2/ready").status_code == 404  # 1 is live
    assert client.get("/readyz").status_code == 200
    shutil.copy(exports["cifar10-v2"] / "saved_model.pb", model_dir / "cifar10" / "2")
    wait_for(lambda: models(client)["cifar10"]["live_version"] == "2")
    assert client.get("/v2/models/cifar10/versions/2/ready").status_code == 200


def test_an_unchanged_failed_version_is_retried_after_a_back_off(model_dir, monkeypatch, caplog):
    """A failure that was not its files' (memory, a flaky volume) heals by itself."""
    monkeypatch.setattr(registry_module, "RETRY_FIRST_S", 0.3)
    load, attempts = registry_module.load_predictor, []

    def fails_twice(path, *args):
        attempts.append(time.monotonic())
        if path.parent.name == "iris" and len(attempts) <= 3:  # cifar10/1 is one of the first three
            raise registry_module.ModelError("out of memory")
        return load(path, *args)

    monkeypatch.setattr(registry_module, "load_predictor", fails_twice)
    with serving(model_dir, poll_interval_s=POLL_S) as client:
        wait_for(lambda: models(client)["iris"]["live_version"] == "1", timeout=10)
    rejected = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected iris version 1")
    ]
    assert len(rejected) == 2 and all("out of memory" in message for message in rejected)
    iris = attempts[-3:]
    # After 0.3 s, then after twice that (give or take a scan every POLL_S, on a busy machine).
    assert 0.3 <= iris[1] - iris[0] < 0.3 + 2 and 0.6 <= iris[2] - iris[1] < 0.6 + 2


def test_a_rejected_versions_retries_start_at_30_s_and_double_up_to_every_10_minutes(tmp_path):
    """As docs/operating/model-repository.md says: "after 30 s, 60 s, ... up to every 10
    minutes"; once its files change, it starts again from 30 s."""
    registry = registry_module.ModelRegistry(service_settings(tmp_path), "/CPU:0", Metrics())
    served = registry_module.ServedModel("iris", tmp_path / "iris")
    waits = []
    for files in [()] * 7 + [(("saved_model.pb", 10, 1),)]:
        registry._reject(served, 1, files, registry_module.ModelError("out of memory"))
        waits.append(round(served.failed[1].retry_at - time.monotonic()))
    assert waits == [30, 60, 120, 240, 480, 600, 600, 30]


def logged(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "service.registry"]


def test_deleting_the_live_version_rolls_back_to_the_newest_remaining_without_failed_requests(
    served, exports, caplog
):
    caplog.set_level(logging.INFO, logger="service.registry")
    client, _, model_dir = served
    publish(exports["cifar10-v2"], model_dir, 2)
    wait_for(lambda: models(client)["cifar10"]["live_version"] == "2")
    stop = threading.Event()

    def calls() -> list[tuple[int, str | None]]:
        answers = []
        while not stop.is_set():
            response = client.post("/predict/image", files={"file": IMAGE})
            answers.append((response.status_code, response.json().get("version")))
        return answers

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(calls) for _ in range(4)]
        try:
            time.sleep(0.2)
            shutil.rmtree(model_dir / "cifar10" / "2")
            wait_for(lambda: client.post("/predict/image", files={"file": IMAGE}).json()["version"] == "1")
            time.sleep(0.2)
        finally:
            stop.set()
        answers = [answer for worker in workers for answer in worker.result()]
    assert {status for status, _ in answers} == {200} and {version for _, version in answers} == {"1", "2"}
    cifar10 = models(client)["cifar10"]
    assert (cifar10["live_version"], cifar10["versions"]) == ("1", ["1"])
    assert [v["version"] for v in client.get("/v1/models/cifar10").json()["model_version_status"]] == ["1"]
    assert any(
        line.startswith("serving cifar10 version 1")
        and line.endswith("replacing version 2 (its folder is gone)")
        for line in logged(caplog)
    )


def test_deleting_every_version_unloads_the_model_and_the_others_keep_the_replica_ready(served, caplog):
    client, channel, model_dir = served
    shutil.rmtree(model_dir / "cifar10" / "1")
    wait_for(lambda: models(client)["cifar10"]["live_version"] is None)
    refused = client.post("/predict/image/cifar10", files={"file": IMAGE})
    assert refused.status_code == 503 and "no version folder in cifar10/" in refused.json()["detail"]
    assert (
        client.get("/readyz").status_code == 200
        and client.post("/predict/iris", json=FEATURES).status_code == 200
    )
    wait_for(lambda: health(channel, "cifar10") == NOT_SERVING)
    assert any(
        line.startswith("unloaded cifar10 version 1: its folder is gone and no other version loads")
        for line in logged(caplog)
    )
    assert 'model_live_version{model="cifar10"} 0.0' in client.get("/metrics").text  # none live


def test_a_model_moved_away_is_gone_from_every_door_and_served_again_when_put_back(served, tmp_path, caplog):
    client, channel, model_dir = served
    assert iris_on_every_door(client, channel) == SERVED_EVERYWHERE
    (model_dir / "iris").rename(tmp_path / "iris-away")
    wait_for(lambda: "iris" not in models(client))
    assert "model iris is gone from MODEL_DIR: unloaded (was serving version 1)" in logged(caplog)
    assert 'model_live_version{model="iris"} 0.0' in client.get("/metrics").text
    wait_for(lambda: iris_on_every_door(client, channel) == GONE_EVERYWHERE)
    assert client.get("/readyz").json() == {
        "ready": True,
        "detail": "all models ready",
        "models": {"cifar10": "ready"},
    }
    (tmp_path / "iris-away").rename(model_dir / "iris")
    wait_for(lambda: iris_on_every_door(client, channel) == SERVED_EVERYWHERE)


def test_a_vanished_model_answers_the_requests_it_holds_then_closes_its_batcher(tmp_path, exports):
    root, gate = tmp_path / "models", tmp_path / "gate"
    install(exports["cifar10"], root)
    shutil.copytree(held_feature_model(tmp_path / "exports", gate), root / "held" / "1")
    with serving(root, poll_interval_s=POLL_S) as client, ThreadPoolExecutor(1) as pool:
        batcher = client.app.state.registry.models["held"].batcher
        rows = {"instances": [[1.0, 2.0, 3.0, 4.0]] * HELD_ROWS}
        try:
            held = pool.submit(client.post, "/v1/models/held:predict", json=rows)
            wait_for(lambda: not batcher.idle)
            (root / "held").rename(tmp_path / "held-away")
            wait_for(lambda: client.get("/v1/models/held").status_code == 404)
            assert client.post("/v1/models/held:predict", json=rows).status_code == 404
            assert not held.done() and not batcher.task.done()  # still computing the held request
        finally:
            open_gate(gate)  # whatever happens, no model call stays held
        assert held.result(timeout=30).status_code == 200
        wait_for(lambda: batcher.task.done())
        assert batcher.task.exception() is None


def test_a_pinned_version_deleted_is_unloaded_and_served_again_when_put_back(model_dir, exports, tmp_path):
    install(exports["cifar10-v2"], model_dir, "cifar10", version=2)
    with serving(model_dir, model_versions="cifar10=1", poll_interval_s=POLL_S) as client:
        (model_dir / "cifar10" / "1").rename(tmp_path / "1")
        cifar10 = wait_for(lambda: (m := models(client)["cifar10"])["live_version"] is None and m)
        assert cifar10["status"] == "pinned version 1 not found in cifar10/"  # never version 2
        (tmp_path / "1").rename(model_dir / "cifar10" / "1")
        wait_for(lambda: models(client)["cifar10"]["live_version"] == "1")


def test_a_reload_holds_the_event_loop_for_milliseconds_at_most(served, exports):
    """A heartbeat task on the app's event loop records, for each of its turns, how much CPU
    time the loop's thread used (`time.thread_time`): the longest stretch anything ran on the
    loop without yielding. CPU time, not wall time, so that other processes on the machine and
    the loading thread's turns with the GIL do not count; only what ran on the loop does."""
    client, _, model_dir = served
    longest = {"cpu": 0.0, "wall": 0.0}

    async def heartbeat():
        loop = asyncio.get_running_loop()
        while True:
            cpu, wall = time.thread_time(), loop.time()
            await asyncio.sleep(0.001)
            longest["cpu"] = max(longest["cpu"], time.thread_time() - cpu)
            longest["wall"] = max(longest["wall"], loop.time() - wall)

    # In a list: the portal would await a task it is handed back, and this one never ends.
    [task] = client.portal.call(lambda: [asyncio.get_running_loop().create_task(heartbeat())])
    try:
        time.sleep(0.2)
        publish(exports["cifar10-v2"], model_dir, 2)
        wait_for(lambda: models(client)["cifar10"]["live_version"] == "2")
        shutil.rmtree(model_dir / "cifar10" / "2")  # and back to version 1
        wait_for(lambda: models(client)["cifar10"]["live_version"] == "1")
        time.sleep(0.2)
    finally:
        client.portal.call(task.cancel)
    print(
        f"longest turn of the loop: {1000 * longest['cpu']:.1f} ms CPU, {1000 * longest['wall']:.1f} ms wall"
    )
    assert longest["cpu"] < 0.05


def test_a_model_state_read_for_an_answer_cannot_be_changed(served):
    client, _, _ = served
    state = client.app.state.registry.states()[0]
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        state.problem = "changed"
