"""Both protocols inside the app: one batcher for all front doors, the API key, limits, a full
queue, a model that is not ready, and the OpenAPI document they are served by (Schemathesis)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import schemathesis
from deployments import install, service_settings, serving, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from payloads import REFUSAL_STATUSES, no_stated_deadline
from schemathesis import GenerationMode

from service.app import create_app

FLOWER = [5.1, 3.5, 1.4, 0.2]
V2_FLOWER = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": FLOWER}]}
FRONT_DOORS = [  # the same flower through each protocol
    ("/predict/iris", {"features": FLOWER}),
    ("/v2/models/iris/infer", V2_FLOWER),
    ("/v1/models/iris:predict", {"instances": [FLOWER]}),
]


def test_requests_from_all_three_front_doors_share_model_calls(client, monkeypatch):
    served = client.app.state.registry.models["iris"]
    compute, sizes = served.predictor.predict, []

    def held(batch):  # the first call waits until the three others have queued behind it
        sizes.append(len(batch))
        deadline = time.monotonic() + 10
        while len(sizes) == 1 and served.batcher.queued < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        return compute(batch)

    monkeypatch.setattr(served.predictor, "predict", held)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(client.post, "/predict/iris", json={"features": FLOWER})
        wait_for(lambda: sizes)
        answers = [pool.submit(client.post, path, json=body) for path, body in FRONT_DOORS]
        assert first.result().status_code == 200
        assert [a.result().status_code for a in answers] == [200, 200, 200]
    assert sizes == [1, 3]  # native, v2 and TF Serving requests in one model call


@pytest.fixture(scope="module")
def guarded(shared_models):
    with serving(shared_models, api_key="s3cret") as client:
        yield client


@pytest.mark.parametrize(("path", "body"), FRONT_DOORS[1:])
def test_the_api_key_guards_inference_and_errors_stay_in_protocol_format(guarded, path, body):
    refused = guarded.post(path, json=body)
    assert refused.status_code == 401
    assert refused.json() == {"error": "missing or wrong API key"}
    assert guarded.post(path, json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert guarded.post(path, json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_health_and_metadata_stay_open_to_probes(guarded):
    for path in ("/v2/health/ready", "/v2/models/iris", "/v1/models/iris", "/v1/models/iris/metadata"):
        assert guarded.get(path).status_code == 200, path


@pytest.mark.parametrize(("path", "body"), FRONT_DOORS[1:])
def test_a_full_queue_answers_503_with_retry_after(client, path, body):
    batcher = client.app.state.registry.models["iris"].batcher
    batcher.queued += batcher.max_queue_size  # as if that many rows were waiting
    try:
        response = client.post(path, json=body)
    finally:
        batcher.queued -= batcher.max_queue_size
    assert response.status_code == 503
    # The seconds the rows ahead need at the model's recent rate (service/batching.py), at least 1.
    assert int(response.headers["retry-after"]) >= 1
    assert "rows waiting" in response.json()["error"]


def test_a_model_that_is_not_ready_answers_503_and_is_reported_as_tf_serving_would(tmp_path, exports):
    root = tmp_path / "models"
    install(exports["iris"], root)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"not a model")
    with serving(root, ready=False) as client:
        wait_for(
            lambda: (
                client.app.state.registry.models.get("broken")
                and client.app.state.registry.models["broken"].failed
            )
        )
        wait_for(lambda: client.app.state.registry.models["iris"].predictor)
        # The server serves iris: a model with no loadable version does not make it unready.
        ready = client.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        infer = client.post("/v2/models/broken/infer", json=V2_FLOWER)
        assert infer.status_code == 503 and "version 1 failed to load" in infer.json()["error"]
        assert client.get("/v2/models/broken/ready").status_code == 503
        status = client.get("/v1/models/broken").json()
        assert status["ready"] is False
        assert status["model_version_status"][0]["state"] == "END"
        assert client.post("/v1/models/broken:predict", json={"instances": [FLOWER]}).status_code == 503
        assert client.post("/v2/models/iris/infer", json=V2_FLOWER).status_code == 200  # the others serve


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v1/models/iris:predict"])
def test_a_body_over_the_cap_is_refused_in_protocol_format(shared_models, path):
    with serving(shared_models, max_upload_bytes=1000) as client:
        response = client.post(path, content=json.dumps({"instances": [FLOWER] * 100}))
        assert response.status_code == 413
        assert "over 1000 bytes" in response.json()["error"]


def test_every_protocol_route_is_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/v1/models/{model}",
        "/v1/models/{model}/versions/{version}",
        "/v1/models/{model}/metadata",
        "/v1/models/{model}/versions/{version}/metadata",
        "/v1/models/{model}:predict",
        "/v1/models/{model}/versions/{version}:predict",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    # A 422 (input the model cannot take) is answered in the protocol's shape, never FastAPI's.
    assert infer["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProtocolError"
    )


# Schema-violating requests must get a 4xx (413 included: a body over the cap), as in
# test_service_properties.
REFUSALS = {"checks": {"negative_data_rejection": {"expected-statuses": REFUSAL_STATUSES}}}


@pytest.fixture(scope="module")
def protocol_operations(shared_models):
    app = create_app(service_settings(shared_models))
    config = schemathesis.config.SchemathesisConfig.from_dict(REFUSALS)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    wait_for(lambda: getattr(app.state, "registry", None) and app.state.registry.ready)
    return [result.ok() for result in schema.include(path_regex=r"^/v[12]").get_all_operations()]


# As for the native routes: what a model takes is known only at run time, so schema-valid
# requests may be refused; every other check applies (no 5xx, documented statuses, bodies and
# content types). Each operation gets its own few examples (a 2-core CI machine), and valid
# ones name a served model and its live version, so bodies reach the codecs and the model
# rather than stopping at a 404 for a random name.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_protocol_routes_conform_to_their_schema(protocol_operations, mode):
    for operation in protocol_operations:

        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(["cifar10", "iris"]))
        def conforms(case, model):
            if mode == GenerationMode.POSITIVE and case.path_parameters:
                case.path_parameters = {**case.path_parameters, "model": model}
                if "version" in case.path_parameters:
                    case.path_parameters["version"] = "1"
            no_stated_deadline(case)
            case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

        try:
            conforms()
        except Unsatisfiable:  # GET /v2 and the health routes: nothing there to get wrong
            assert mode == GenerationMode.NEGATIVE, operation.path


def test_nothing_is_left_queued_after_bad_requests(client):
    """Each refusal is the exact one its fault calls for, one row past the limit included, and
    leaves no rows nor announced requests behind in the batcher; a full request still passes."""
    row = [5.1, 3.5, 1.4, 0.2]

    def v2(rows: int) -> dict:
        return {"inputs": [{"name": "features", "shape": [rows, 4], "datatype": "FP32", "data": row * rows}]}

    refusals = [
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32"}]},
            "input 'features' has neither data nor binary_data_size",
        ),
        (
            "/v1/models/iris:predict",
            {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32"}]},
            "input 'features': float32 data must be numbers",
        ),
        ("/v2/models/iris/infer", {"instances": 1}, "inputs: Field required"),
        ("/v1/models/iris:predict", {"instances": 1}, '"instances" must be a list'),
    ]
    # The client fixture's max batch size is 16: one row more is too large a request (413).
    too_many = [("/v2/models/iris/infer", v2(17)), ("/v1/models/iris:predict", {"instances": [row] * 17})]
    for path, body, error in refusals:
        response = client.post(path, json=body)
        assert (response.status_code, response.json()) == (400, {"error": error}), path
    for path, body in too_many:
        response = client.post(path, json=body)
        assert (response.status_code, response.json()) == (
            413,
            {"error": "more than 16 instances in one request (MAX_BATCH_SIZE)"},
        )
    full_v2 = client.post("/v2/models/iris/infer", json=v2(16))
    full_v1 = client.post("/v1/models/iris:predict", json={"instances": [row] * 16})
    assert full_v2.status_code == full_v1.status_code == 200, (full_v2.text, full_v1.text)
    assert full_v2.json()["outputs"][0]["shape"] == [16, 3]
    assert len(full_v1.json()["predictions"]) == 16
    batcher = client.app.state.registry.models["iris"].batcher
    assert batcher.queued == 0 and batcher._expected == 0
    assert threading.active_count() < 100


def test_a_failure_inside_the_model_is_a_500_in_protocol_format_and_counted(client, monkeypatch):
    served = client.app.state.registry.models["iris"]

    def broken(batch):
        raise RuntimeError("the model broke")

    def unhandled() -> float:
        lines = client.get("/metrics").text.splitlines()
        return sum(
            float(line.split()[-1])
            for line in lines
            if line.startswith('service_errors_total{kind="unhandled"}')
        )

    before = unhandled()
    monkeypatch.setattr(served.predictor, "predict", broken)
    for path, body in FRONT_DOORS[1:]:
        response = client.post(path, json=body)
        assert (response.status_code, response.json()) == (500, {"error": "internal error"})
    assert unhandled() - before == 2
