"""gRPC on `python -m service` with its default workers: each official client library's checks
(tests/grpc_clients/) in a process of its own, since tritonclient's and kserve's generated
`inference.*` modules cannot share one; and, from here, through the service's own stubs, what
every RPC shares: health, the API key, the message limit, metrics, the retry hint, draining."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from deployments import install, wait_for
from deployments import serving as in_process
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from served import ANSWERING, STARTED, free_port, serve

from service.protocols.grpc_server import GrpcPortTaken
from service.protocols.third_party import open_inference_pb2 as oip
from service.protocols.third_party import tensorflow_serving_pb2 as tfs

pytestmark = pytest.mark.server  # starts `python -m service`

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SERVICE_TEST_MODEL_DIR", ROOT / "models"))
CLIENTS = {  # checks module → the library it drives
    "tritonclient_checks.py": "tritonclient.grpc",
    "kserve_checks.py": "kserve",
    "tfserving_checks.py": "tensorflow_serving.apis",
}
KEY = "grpc-test-key"
BODY_LIMIT = 64 * 1024
INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
SETTINGS = {"POLL_INTERVAL_S": "0", "ACCESS_LOG": "false"}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped models (models/), as the official clients' checks compare them with: their
    SavedModels' own outputs (to 1e-4), which the gRPC doors answer with MODEL_RUNTIME=savedmodel.
    (The default, cifar10's fast form on CPUs, is behind the same data plane: test_service_runtimes.)"""
    if not all((MODELS / name).is_dir() for name in ("cifar10", "iris")):
        pytest.skip(f"no shipped models in {MODELS}")
    log = tmp_path_factory.getbasetemp() / "grpc-shipped.log"
    with serve(MODELS, log, **SETTINGS, MAX_BATCH_SIZE="64", MODEL_RUNTIME="savedmodel") as running:
        yield f"127.0.0.1:{running.grpc_port}"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, exports):
    """Tiny models, an API key, a small body limit, and a model folder with no version in it
    (never ready): (HTTP base URL, gRPC target)."""
    root = tmp_path_factory.mktemp("grpc") / "models"
    install(exports["cifar10"], root)
    install(exports["iris"], root)
    (root / "empty").mkdir()
    # Connections kept: these tests are about each call's answer, which a call meeting the end
    # of an aged connection would not get (docs/api/grpc.md).
    settings = {
        **SETTINGS,
        "API_KEY": KEY,
        "MAX_UPLOAD_BYTES": str(BODY_LIMIT),
        "GRPC_MAX_CONNECTION_AGE_S": "0",
    }
    log = tmp_path_factory.getbasetemp() / "grpc-guarded.log"
    with serve(root, log, ANSWERING, **settings) as running:
        target = f"127.0.0.1:{running.grpc_port}"
        wait_for(lambda: serving(target, "iris", "cifar10"), 120)
        yield running.url, target


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def serving(target: str, *services: str) -> bool:
    """Every one of `services` SERVING (False while the server does not answer yet)."""
    try:
        return all(health(target, service) == SERVING for service in services)
    except grpc.RpcError:
        return False


def call(target: str, path: str, request, response_type, metadata=()):
    """One unary RPC by its wire path; (response, call) or the grpc.RpcError raised."""
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return rpc.with_call(request, metadata=metadata, timeout=30)


def failure(target: str, path: str, request, response_type, metadata=()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(target, path, request, response_type, metadata)
    return caught.value


def iris_request(rows: int = 1, model: str = "iris") -> oip.ModelInferRequest:
    features = np.ones((rows, 4), np.float32)
    request = oip.ModelInferRequest(model_name=model)
    request.inputs.add(name="features", datatype="FP32", shape=features.shape)
    request.raw_input_contents.append(features.tobytes())
    return request


def infer(target: str, request: oip.ModelInferRequest, metadata=(("x-api-key", KEY),)):
    return call(target, INFER, request, oip.ModelInferResponse, metadata)


# --- the official clients -------------------------------------------------------------------


@pytest.mark.required_in_ci
@pytest.mark.parametrize("checks", CLIENTS)
def test_official_client_works_unchanged_against_the_service(shipped, checks):
    if importlib.util.find_spec(CLIENTS[checks].split(".")[0]) is None:
        pytest.skip(f"{CLIENTS[checks]} is not installed (scripts/test installs it)")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests/grpc_clients" / checks),
        ],
        cwd=ROOT,
        env={**os.environ, "GRPC_TARGET": shipped, "GRPC_MODEL_DIR": str(MODELS), "GRPC_MAX_BATCH": "64"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


# --- health ---------------------------------------------------------------------------------


def test_health_serves_once_every_model_is_ready_each_protocol_and_model_by_name(shipped):
    services = [
        "",
        "inference.GRPCInferenceService",
        "tensorflow.serving.PredictionService",
        "cifar10",
        "iris",
    ]
    assert {service: health(shipped, service) for service in services} == dict.fromkeys(services, SERVING)


def test_health_names_the_model_that_is_not_ready_and_the_server_still_serves(guarded):
    _, target = guarded
    assert health(target, "cifar10") == SERVING
    assert health(target, "empty") == NOT_SERVING
    assert health(target, "") == SERVING  # a folder with no version never holds the server hostage
    with pytest.raises(grpc.RpcError) as unknown:
        health(target, "no-such-model")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_not_ready_is_unavailable_with_a_retry_hint(guarded):
    error = failure(
        guarded[1], INFER, iris_request(model="empty"), oip.ModelInferResponse, (("x-api-key", KEY),)
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in error.details()
    assert ("retry-after", "1") in tuple(error.trailing_metadata())


# --- the API key, the body limit, metrics ---------------------------------------------------


def test_inference_needs_the_api_key_as_http_does_and_metadata_does_not(guarded):
    _, target = guarded
    for metadata in ((), (("x-api-key", "wrong"),), (("authorization", "Bearer wrong"),)):
        error = failure(target, INFER, iris_request(), oip.ModelInferResponse, metadata)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong API key",
        )
    predict = tfs.PredictRequest(model_spec=tfs.ModelSpec(name="iris"))
    error = failure(target, "/tensorflow.serving.PredictionService/Predict", predict, tfs.PredictResponse)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for metadata in ((("x-api-key", KEY),), (("authorization", f"Bearer {KEY}"),)):
        response, _ = infer(target, iris_request(), metadata)
        assert response.model_name == "iris"
    metadata, _ = call(
        target,
        "/inference.GRPCInferenceService/ModelMetadata",
        oip.ModelMetadataRequest(name="iris"),
        oip.ModelMetadataResponse,
    )
    assert [tensor.name for tensor in metadata.inputs] == ["features"]


def test_a_message_over_the_http_body_limit_exhausts_a_resource_and_one_under_it_is_read(guarded):
    _, target = guarded
    request = oip.ModelInferRequest(model_name="cifar10")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(b"x" * BODY_LIMIT).to_bytes(4, "little") + b"x" * BODY_LIMIT)
    error = failure(target, INFER, request, oip.ModelInferResponse, (("x-api-key", KEY),))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    del request.raw_input_contents[:]
    request.raw_input_contents.append((BODY_LIMIT // 2).to_bytes(4, "little") + b"x" * (BODY_LIMIT // 2))
    error = failure(target, INFER, request, oip.ModelInferResponse, (("x-api-key", KEY),))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, "read and refused as not an image"


def test_rpcs_are_counted_by_method_with_protocol_grpc_and_the_status_rest_would_answer(guarded):
    base, target = guarded
    infer(target, iris_request())
    failure(target, INFER, iris_request(), oip.ModelInferResponse)  # no key: 401 over REST
    counted = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
        for s in family.samples
        if s.name == "http_requests_total" and s.labels.get("protocol") == "grpc"
    }
    assert counted[(INFER, "200")] >= 1 and counted[(INFER, "401")] >= 1


# --- draining -------------------------------------------------------------------------------


def test_sigterm_turns_health_not_serving_while_rpcs_are_still_answered_then_exits(tmp_path, shared_models):
    settings = {**SETTINGS, "LOG_LEVEL": "warning", "DRAIN_DELAY_S": "3"}
    with serve(shared_models, tmp_path / "server.log", **settings) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        assert health(target) == SERVING
        server.process.send_signal(signal.SIGTERM)
        # Answered at all, the call was answered within the 3 s delay: after it, the port closes.
        wait_for(lambda: health(target) == NOT_SERVING, 3)
        response, _ = infer(target, iris_request(), ())
        assert server.process.wait(timeout=60) == 0
    assert response.model_name == "iris"


def test_a_grpc_port_another_server_holds_is_refused_not_shared(tmp_path, shared_models):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with serve(shared_models, tmp_path / "server.log", STARTED, GRPC_PORT=str(port)) as server:
            assert server.process.wait(timeout=60) != 0
    assert f"GRPC_PORT {port} on 127.0.0.1 is taken" in (tmp_path / "server.log").read_text()


def test_grpc_port_equal_to_the_http_port_stops_the_service_with_why(tmp_path, shared_models):
    port = str(free_port())
    env = {**os.environ, "MODEL_DIR": str(shared_models), "PORT": port, "GRPC_PORT": port}
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert f"GRPC_PORT and PORT are both {port}: gRPC needs a port of its own" in done.stderr


def test_a_worker_that_cannot_bind_the_grpc_port_fails_its_start_up(shared_models):
    with socket.socket() as other:  # a listener without SO_REUSEPORT: the port is not ours to share
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        taken = pytest.raises(GrpcPortTaken, match=f"GRPC_PORT {port} on 127.0.0.1 cannot be bound")
        with taken, in_process(shared_models, grpc_port=port):
            pass


def test_sigterm_stops_both_doors_taking_work_at_once_and_drains_them_together(tmp_path, shared_models):
    """An HTTP request still arriving holds the HTTP drain for SHUTDOWN_TIMEOUT_S; meanwhile
    gRPC takes no new call (it did, answering OK, until the HTTP drain was over) and new HTTP
    connections are refused (they waited, unanswered), and the whole stop takes one timeout."""
    timeout_s = 10
    settings = {**SETTINGS, "LOG_LEVEL": "warning", "WORKERS": "2", "SHUTDOWN_TIMEOUT_S": str(timeout_s)}
    with serve(shared_models, tmp_path / "server.log", **settings) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        assert infer(target, iris_request(), ())[0].model_name == "iris"
        arriving = socket.create_connection(("127.0.0.1", server.port))
        arriving.sendall(
            b"POST /predict/iris HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        time.sleep(0.5)  # read by a worker: its request is in flight
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused = wait_for(lambda: refusal(target), timeout_s / 2)
        assert health_or_none(target) in (NOT_SERVING, None)
        wait_for(lambda: http_refused(server.url), timeout_s / 2)
        assert server.process.poll() is None, "the HTTP drain is still waiting for the request in flight"
        assert server.process.wait(timeout=timeout_s + 20) == 0
        stopped_after = time.monotonic() - signalled
        arriving.close()
    assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert stopped_after < 2 * timeout_s, "the two doors drained one after the other"


def refusal(target: str) -> grpc.StatusCode | None:
    """The code a new call gets, None if it is answered."""
    try:
        with grpc.insecure_channel(target) as channel:
            rpc = channel.unary_unary(
                INFER,
                request_serializer=oip.ModelInferRequest.SerializeToString,
                response_deserializer=oip.ModelInferResponse.FromString,
            )
            rpc(iris_request(), timeout=2)
    except grpc.RpcError as error:
        return error.code()
    return None


def health_or_none(target: str) -> int | None:
    try:
        return health(target)
    except grpc.RpcError:
        return None  # not answering at all: the server has stopped


def http_refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


# --- one channel, every worker --------------------------------------------------------------


def served_by(channel: grpc.Channel) -> str:
    """Which worker answered one call on `channel` (its `x-served-by` trailing metadata)."""
    rpc = channel.unary_unary(
        INFER,
        request_serializer=oip.ModelInferRequest.SerializeToString,
        response_deserializer=oip.ModelInferResponse.FromString,
    )
    _, done = rpc.with_call(iris_request(), timeout=30)
    return dict(done.trailing_metadata())["x-served-by"]


@pytest.mark.parametrize("age_s", ["0", "0.2"])
def test_one_channels_calls_reach_every_worker_only_when_connections_age(tmp_path, shared_models, age_s):
    settings = {**SETTINGS, "WORKERS": "2", "GRPC_MAX_CONNECTION_AGE_S": age_s}
    with (
        serve(shared_models, tmp_path / "server.log", **settings) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        workers = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(workers) < 2:
            workers.add(served_by(channel))
            time.sleep(0.02)
    assert len(workers) == (1 if age_s == "0" else 2), workers
