"""Time is part of the contract: a request states how long its client waits (or gets
REQUEST_TIMEOUT_S), one the model cannot answer in time is refused at once with when to retry,
one still queued at its deadline gets 504, and one whose client has gone (an HTTP disconnect, a
cancelled gRPC call) leaves the queue: the model never computes rows nobody waits for. Each is
counted under its own status (504, 499), on every door."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from deployments import HELD_ROWS, held_feature_model, serving, wait_for
from prometheus_client.parser import text_string_to_metric_families
from served import free_port, serve
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from service import deadlines
from service.middleware import BodyLimits
from service.protocols.third_party import open_inference_pb2 as oip

FLOWER = [5.1, 3.5, 1.4, 0.2]
INFER = "/inference.GRPCInferenceService/ModelInfer"


def statuses(text: str, route: str) -> dict[str, float]:
    """Requests counted for `route` (a template, or a gRPC method path), by status."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "http_requests_total" and s.labels["route"] == route:
                counts[s.labels["status"]] = counts.get(s.labels["status"], 0) + s.value
    return counts


# --- the gRPC clients: v2's stubs and TF Serving's ---------------------------------------------
# v2 through raw stubs of the protocol, as tritonclient's own calls go on the wire:
# tritonclient.grpc cannot be imported beside kserve, which other test modules of this process
# import (tests/grpc_clients/ runs tritonclient itself, in a process of its own).

METHODS = {  # each client's RPC, as the request metrics name it
    "v2": INFER,
    "tensorflow-serving-api": "/tensorflow.serving.PredictionService/Predict",
}


def v2_request(model: str, timeout_us: int = 0) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model)
    features = request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    features.contents.fp32_contents.extend(FLOWER)
    if timeout_us:
        request.parameters["timeout"].int64_param = timeout_us
    return request


def v2_infer(channel: grpc.Channel):
    return channel.unary_unary(
        INFER,
        request_serializer=oip.ModelInferRequest.SerializeToString,
        response_deserializer=oip.ModelInferResponse.FromString,
    )


def tfserving_request(model: str = "held") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array([FLOWER], np.float32)))
    return request


# --- in the test's process: the model held by a spy ------------------------------------------


def test_a_default_deadline_counts_from_when_the_request_came_in_or_else_from_now():
    async def scenario():
        loop = asyncio.get_running_loop()
        unnoted = deadlines.deadline(0.7) - loop.time()  # no door noted its arrival
        deadlines.arrived()
        came_in = loop.time()
        await asyncio.sleep(0.05)
        return unnoted, deadlines.deadline(0.7) - came_in

    unnoted, noted = asyncio.run(scenario())
    assert 0.69 < unnoted <= 0.7 and noted == pytest.approx(0.7, abs=0.001)


@contextlib.contextmanager
def held_model(client, monkeypatch, model: str = "iris"):
    """The model's calls wait until the yielded gate is set (`entered` once one has started);
    `batches` lists the rows of each call made."""
    predictor = client.app.state.registry.models[model].predictor
    gate, entered, batches = threading.Event(), threading.Event(), []
    compute = predictor.predict

    def held(batch):
        batches.append(len(batch))
        entered.set()
        gate.wait(30)
        return compute(batch)

    monkeypatch.setattr(predictor, "predict", held)
    # As if the model had lately been quick, whatever a busy machine measured while it warmed
    # up: admission then counts only the held call (a test that wants it slow says so).
    for _ in range(9):
        client.app.state.registry.models[model].batcher.rate.record(1, 0.001)
    try:
        yield gate, entered, batches
    finally:
        gate.set()


def test_a_request_still_queued_at_its_stated_deadline_gets_504_and_is_never_computed(
    shared_models, monkeypatch
):
    with serving(shared_models) as client, held_model(client, monkeypatch) as (gate, entered, batches):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/predict/iris", json={"features": FLOWER})
            assert entered.wait(30)
            late = client.post("/predict/iris", json={"features": FLOWER}, headers={"Request-Timeout": "0.2"})
            gate.set()
            assert first.result().status_code == 200
        assert late.status_code == 504
        assert late.json() == {"detail": "model iris could not answer before the request's deadline"}
        assert batches == [1]  # the late request's row never reached the model
        assert statuses(client.get("/metrics").text, "/predict/{model}") == {"200": 1, "504": 1}


def test_the_v2_timeout_parameter_is_a_deadline_in_microseconds_as_triton_reads_it(
    shared_models, monkeypatch
):
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FLOWER}]}
    with serving(shared_models) as client, held_model(client, monkeypatch) as (gate, entered, batches):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/v2/models/iris/infer", json=body)
            assert entered.wait(30)
            late = client.post("/v2/models/iris/infer", json={**body, "parameters": {"timeout": 200_000}})
            gate.set()
            assert first.result().status_code == 200
        assert late.status_code == 504 and "deadline" in late.json()["error"]
        assert batches == [1]
        for wrong in (-1, "1", 1.5, True):
            refused = client.post("/v2/models/iris/infer", json={**body, "parameters": {"timeout": wrong}})
            assert refused.status_code == 400, wrong
            assert "parameter 'timeout' must be whole microseconds" in refused.json()["error"]
        unstated = client.post("/v2/models/iris/infer", json={**body, "parameters": {"timeout": 0}})
        assert unstated.status_code == 200  # 0 is Triton's "none stated"


def test_a_request_that_states_no_deadline_waits_request_timeout_s_from_when_it_came_in(
    shared_models, monkeypatch
):
    with (
        serving(shared_models, request_timeout_s=0.3) as client,
        held_model(client, monkeypatch) as (gate, entered, batches),
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(client.post, "/predict/iris", json={"features": FLOWER})
        assert entered.wait(30)
        late = client.post("/predict/iris", json={"features": FLOWER})
        patient = pool.submit(
            client.post, "/predict/iris", json={"features": FLOWER}, headers={"Request-Timeout": "60"}
        )
        wait_for(lambda: client.app.state.registry.models["iris"].batcher.queued == 1)
        gate.set()
        assert first.result().status_code == 200 and patient.result().status_code == 200
        assert late.status_code == 504
        assert batches == [1, 1]  # the held call, then the patient one: a stated deadline counts


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan", ""])
def test_a_request_timeout_that_is_not_a_positive_number_of_seconds_is_refused(client, value):
    native = client.post("/predict/iris", json={"features": FLOWER}, headers={"Request-Timeout": value})
    assert native.status_code == 422 and "Request-Timeout" in native.json()["detail"]
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FLOWER}]}
    v2 = client.post("/v2/models/iris/infer", json=body, headers={"Request-Timeout": value})
    assert v2.status_code == 400 and "Request-Timeout" in v2.json()["error"]


def test_a_request_the_model_cannot_answer_in_time_is_refused_at_once_with_when_to_retry(
    shared_models, monkeypatch
):
    port = free_port()
    with (
        serving(shared_models, grpc_port=port) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        held_model(client, monkeypatch) as (gate, entered, batches),
    ):
        batcher = client.app.state.registry.models["iris"].batcher
        for _ in range(9):  # as if the model had lately taken 10 s a row
            batcher.rate.record(1, 10.0)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/predict/iris", json={"features": FLOWER})
            assert entered.wait(30)  # about 10 s of work ahead of anything else now
            refused = client.post(
                "/predict/iris", json={"features": FLOWER}, headers={"Request-Timeout": "5"}
            )
            request = oip.ModelInferRequest(model_name="iris")
            request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(np.array([FLOWER], "<f4").tobytes())
            with pytest.raises(grpc.RpcError) as unavailable:
                channel.unary_unary(
                    INFER,
                    request_serializer=oip.ModelInferRequest.SerializeToString,
                    response_deserializer=oip.ModelInferResponse.FromString,
                )(request, timeout=5)
            gate.set()
            assert first.result().status_code == 200
        assert refused.status_code == 503 and "after the request's deadline" in refused.json()["detail"]
        # The rest of the busy call's 10 s, whole: the test took under a few seconds of them.
        assert 6 <= int(refused.headers["Retry-After"]) <= 10
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        retry_after = dict(unavailable.value.trailing_metadata())["retry-after"]
        assert 6 <= int(retry_after) <= int(refused.headers["Retry-After"])
        assert batches == [1]
        metrics = client.get("/metrics").text
        assert statuses(metrics, "/predict/{model}")["503"] == 1
        assert statuses(metrics, INFER) == {"503": 1}


@pytest.mark.parametrize("client", METHODS)
def test_a_grpc_call_still_queued_at_its_deadline_is_deadline_exceeded_and_never_computed(
    shared_models, monkeypatch, client
):
    port = free_port()
    target = f"127.0.0.1:{port}"
    with (
        serving(shared_models, grpc_port=port) as http,
        held_model(http, monkeypatch) as (gate, entered, batches),
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(http.post, "/predict/iris", json={"features": FLOWER})
        assert entered.wait(30)
        call_with_a_deadline(client, target, "iris", 0.3)
        gate.set()
        assert first.result().status_code == 200
        assert batches == [1]  # the call's row never reached the model
        method = METHODS[client]
        # Counted once: 504, or 499 when the client's own cancel at its deadline reaches the
        # server first (a race; which one the Door counts when is tested in-process, in
        # tests/test_protocol_grpc_server.py).
        counted = wait_for(lambda: statuses(http.get("/metrics").text, method))
        assert counted in ({"504": 1}, {"499": 1})


def test_the_v2_timeout_parameter_is_a_deadline_over_grpc_too(shared_models, monkeypatch):
    port = free_port()
    with (
        serving(shared_models, grpc_port=port) as http,
        held_model(http, monkeypatch) as (gate, entered, batches),
        ThreadPoolExecutor(1) as pool,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        first = pool.submit(http.post, "/predict/iris", json={"features": FLOWER})
        assert entered.wait(30)
        with pytest.raises(grpc.RpcError) as caught:  # the call itself may take 60 s
            v2_infer(channel)(v2_request("iris", timeout_us=300_000), timeout=60)
        gate.set()
        assert first.result().status_code == 200
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "could not answer before the request's deadline" in caught.value.details()
        assert batches == [1]


def call_with_a_deadline(client: str, target: str, model: str, seconds: float) -> None:
    """Call `model` through `client`'s protocol with a deadline it misses."""
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as rpc_error:
        if client == "v2":
            v2_infer(channel)(v2_request(model), timeout=seconds)
        else:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                tfserving_request(model), timeout=seconds
            )
    assert rpc_error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# --- over real sockets: clients that leave ------------------------------------------------------


@pytest.fixture(scope="module")
def held_server(tmp_path_factory, shared_models):
    """`python -m service`, one worker, with the `held` model (a call of HELD_ROWS rows waits for
    its gate) and a default deadline far beyond any test, so that only a client leaving or a
    stated deadline takes a request out of the queue."""
    root = tmp_path_factory.mktemp("deadlines")
    shutil.copytree(shared_models, root / "models")
    gate = root / "gate"
    held_feature_model(root / "models", gate)
    gate.touch()  # open while it loads (its warm-up holds a call of HELD_ROWS rows too)
    settings = {"WORKERS": "1", "POLL_INTERVAL_S": "0", "LOG_LEVEL": "warning", "REQUEST_TIMEOUT_S": "600"}
    with serve(root / "models", root / "server.log", **settings) as server:
        yield server, gate


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def load(url: str) -> tuple[float, float, float]:
    """The held model's (rows queued, rows in the model, rows computed so far)."""
    values = {"model_queue_depth": 0.0, "model_rows_in_progress": 0.0, "model_batch_size_sum": 0.0}
    for family in text_string_to_metric_families(scrape(url)):
        for s in family.samples:
            if s.name in values and s.labels.get("model") == "held":
                values[s.name] = s.value
    return values["model_queue_depth"], values["model_rows_in_progress"], values["model_batch_size_sum"]


@contextlib.contextmanager
def a_held_call(held_server):
    """A call of HELD_ROWS rows in the model's hands for as long as this lasts, and answered after;
    yields the rows computed before it."""
    server, gate = held_server
    gate.unlink(missing_ok=True)
    computed = load(server.url)[2]
    with ThreadPoolExecutor(1) as pool:
        body = {"instances": [FLOWER] * HELD_ROWS}
        held = pool.submit(httpx.post, f"{server.url}/predict/held", json=body, timeout=120)
        try:
            wait_for(lambda: load(server.url)[1] == HELD_ROWS)
            yield computed
        finally:
            gate.touch()
        assert held.result().status_code == 200


@pytest.mark.server
def test_a_client_that_disconnects_takes_its_request_out_of_the_queue(held_server):
    server, _ = held_server
    before = statuses(scrape(server.url), "/predict/{model}")
    body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
    request = (
        b"POST /predict/held HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with a_held_call(held_server) as computed:
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as client:
            client.sendall(request)
            wait_for(lambda: load(server.url)[0] == 1)  # queued behind the held call
        # The client has hung up: its row leaves the queue while the model is still held.
        wait_for(lambda: load(server.url)[0] == 0)
        assert load(server.url)[1] == HELD_ROWS
    wait_for(lambda: load(server.url)[1] == 0)
    assert load(server.url)[2] == computed + HELD_ROWS  # the held call's rows only
    after = statuses(scrape(server.url), "/predict/{model}")
    assert after.get("499", 0) == before.get("499", 0) + 1


def queued_one(url: str) -> None:
    wait_for(lambda: load(url)[0] == 1)


def cancel_a_queued_call(client: str, target: str, url: str) -> None:
    """Call the held model through `client`'s protocol, and cancel the call once it is queued."""
    with grpc.insecure_channel(target) as channel:
        if client == "v2":
            call = v2_infer(channel).future(v2_request("held"))
        else:
            call = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.future(
                tfserving_request()
            )
        queued_one(url)
        call.cancel()
        assert call.cancelled()


@pytest.mark.server
@pytest.mark.parametrize("client", METHODS)
def test_a_cancelled_grpc_call_takes_its_request_out_of_the_queue(held_server, client):
    server, _ = held_server
    before = statuses(scrape(server.url), METHODS[client])
    with a_held_call(held_server) as computed:
        cancel_a_queued_call(client, f"127.0.0.1:{server.grpc_port}", server.url)
        wait_for(lambda: load(server.url)[0] == 0)  # while the model is still held
        assert load(server.url)[1] == HELD_ROWS
    wait_for(lambda: load(server.url)[1] == 0)
    assert load(server.url)[2] == computed + HELD_ROWS  # the held call's rows only
    counted = lambda: statuses(scrape(server.url), METHODS[client]).get("499", 0)  # noqa: E731
    wait_for(lambda: counted() == before.get("499", 0) + 1)


def test_the_default_deadline_counts_from_the_last_byte_of_the_body_not_from_a_slow_upload():
    """A client on a slow network is not refused for the time its upload took: REQUEST_TIMEOUT_S
    starts when its body is in (service/middleware.py), not when its headers were."""

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        chunks = [
            {"type": "http.request", "body": b"a", "more_body": True},
            {"type": "http.request", "body": b"b"},
        ]
        last_byte = 0.0

        async def slow_network() -> dict:
            nonlocal last_byte
            await asyncio.sleep(0.05)  # the upload takes its time
            last_byte = loop.time()
            return chunks.pop(0)

        seen = {}

        async def route(scope, receive, send) -> None:
            deadlines.arrived()  # headers in: where the route's dependency notes the request
            while (await receive()).get("more_body"):
                pass
            seen["deadline"] = deadlines.deadline(0.7)

        await BodyLimits(route, max_bytes=100, seconds=10)(
            {"type": "http", "headers": []}, slow_network, None
        )
        return last_byte, seen["deadline"]

    last_byte, deadline = asyncio.run(scenario())
    assert deadline >= last_byte + 0.7
