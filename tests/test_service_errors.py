"""Bad input gets a clear 4xx JSON `{"detail": ...}`, never a 5xx, and the service keeps serving."""

from __future__ import annotations

import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from deployments import install, serving, wait_for
from payloads import GOOD_FEATURES, GOOD_IMAGE, assert_error, encode, photo, png_declaring

from service.batching import Closed, Crashed, QueueFull
from service.budget import BudgetExceeded, DecoderBusy
from service.errors import GRPC_CODES, STATUS, grpc_code_of, headers_of, status_of, status_of_grpc_code
from service.faults import BodyTooLarge, TooManyRows
from service.images import ImageTooLarge
from service.registry import ModelNotReady, UnknownModel


@pytest.fixture(autouse=True)
def still_serving(request, client):
    """After every bad request, good ones still work, on the app that took the bad ones."""
    yield
    abused = (
        request.getfixturevalue("small_body_client")
        if "small_body_client" in request.fixturenames
        else client
    )
    assert abused.post("/predict/image", files={"file": GOOD_IMAGE}).status_code == 200
    assert abused.post("/predict/iris", json=GOOD_FEATURES).status_code == 200


# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, status, detail",
    [
        (b"", 400, "empty"),
        (GOOD_IMAGE[: len(GOOD_IMAGE) // 2], 400, "cannot decode"),
        (b"this is text, not an image\n", 415, "not an image"),
        (encode(photo(), "PCX"), 415, "accepted format"),
        (png_declaring(50_000, 50_000), 413, "pixels"),
    ],
)
def test_bad_images(client, data, status, detail):
    assert_error(client.post("/predict/image", files={"file": ("x.png", data, "image/png")}), status, detail)


def test_one_bad_file_among_several_is_named(client):
    files = [("file", GOOD_IMAGE), ("file", b"")]
    assert_error(client.post("/predict/image", files=files), 400, "image 2: empty")


def test_json_to_the_image_endpoint_is_unsupported_media(client):
    assert_error(client.post("/predict/image", json={"file": "cat.jpg"}), 415, "multipart/form-data")


def test_upload_without_a_file_part(client):
    assert_error(client.post("/predict/image", files={"image": GOOD_IMAGE}), 422, "no part named 'file'")
    assert_error(client.post("/predict/image", data={"file": "cat.jpg"}), 415)  # urlencoded form


def test_too_many_parts(client):
    """The client fixture's max batch size is 16: 16 files are one full batch, 17 are refused."""
    answered = client.post("/predict/image", files=[("file", GOOD_IMAGE)] * 16)
    assert answered.status_code == 200 and len(answered.json()["predictions"]) == 16
    files = [("file", GOOD_IMAGE)] * 17
    assert_error(client.post("/predict/image", files=files), 413, "more than 16 instances in one request")


def test_parts_that_are_not_files_count_against_the_parts_limit(client):
    """Every part costs parsing, kept or not: 16 parts (one file, 15 other fields) are read, a
    17th is refused before the rest of the body is, even though only one of them is an image."""
    fields = {"note": (None, b"x")}
    answered = client.post("/predict/image", files=[("file", GOOD_IMAGE)] + [*fields.items()] * 15)
    assert answered.status_code == 200 and answered.json()["label"]
    many = [("file", GOOD_IMAGE)] + [*fields.items()] * 16
    assert_error(client.post("/predict/image", files=many), 413, "more than 16 instances in one request")


@pytest.mark.parametrize(
    "body",
    [
        b'--XYZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',  # no closing boundary
        b"garbage without any boundary",
        # a part header of 100 kB
        b'--XYZ\r\nContent-Disposition: form-data; name="file"\r\nX-Junk: '
        + b"j" * 100_000
        + b"\r\n\r\nabc\r\n--XYZ--\r\n",
    ],
)
def test_malformed_multipart(client, body):
    response = client.post(
        "/predict/image", content=body, headers={"content-type": "multipart/form-data; boundary=XYZ"}
    )
    assert_error(response, 400, "multipart")


def test_multipart_without_boundary(client):
    response = client.post("/predict/image", content=b"x", headers={"content-type": "multipart/form-data"})
    assert_error(response, 400, "boundary")


def test_file_names_are_never_used(client, tmp_path, monkeypatch):
    working = tmp_path / "a" / "b"  # where "../../etc/passwd" would land, relative to the cwd
    working.mkdir(parents=True)
    monkeypatch.chdir(working)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    files = {"file": ("../../etc/passwd\x00.png", GOOD_IMAGE, "image/png")}
    assert client.post("/predict/image", files=files).status_code == 200
    assert [path for path in tmp_path.rglob("*") if not path.is_dir()] == []


# --- features -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, detail",
    [
        ({"features": [1, 2, 3]}, "must have shape [n, 4]"),
        ({"features": [1, 2, 3, 4, 5]}, "got [1, 5]"),
        ({"features": []}, "got [1, 0]"),
        ({"features": ["5.1", 3.5, 1.4, 0.2]}, "valid number"),
        ({"features": [True, 3.5, 1.4, 0.2]}, "valid number"),
        ({"features": [None, 3.5, 1.4, 0.2]}, "valid number"),
        ({"features": [[5.1], 3.5, 1.4, 0.2]}, "valid number"),
        ({"features": "5.1,3.5,1.4,0.2"}, "valid list"),
        ({"features": [5.1, 3.5, 1.4, 0.2], "model": "iris"}, "extra"),
        ({"instances": []}, "no instances to classify"),
        ({"instances": [[5.1, 3.5, 1.4, 0.2], [1, 2]]}, "instance 2 has 2 features"),
        (
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4},
            "got petal_length, sepal_length, sepal_width",
        ),
        (
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, "colour": 1},
            "colour",
        ),
        ({}, "got none"),
        ([5.1, 3.5, 1.4, 0.2], "expected"),
        ("5.1", "expected"),
        (5.1, "expected"),
        ({"features": [1e39, 1, 1, 1]}, "finite as float32"),
    ],
)
def test_bad_features(client, body, detail):
    assert_error(client.post("/predict/iris", json=body), 422, detail)


def test_too_many_instances_are_too_large_a_request(client):
    response = client.post("/predict/iris", json={"instances": [[5.1, 3.5, 1.4, 0.2]] * 17})
    assert_error(response, 413, "more than 16 instances in one request")


def test_features_that_overflow_inside_the_model_are_refused(tmp_path, exports):
    root = tmp_path / "models"
    install(exports["ones"], root, name="iris")  # every weight 1: 4 x 3e38 overflows float32
    with serving(root) as overflowing:
        response = overflowing.post("/predict/iris", json={"features": [3e38, 3e38, 3e38, 3e38]})
        assert_error(response, 422, "the model's output is not finite")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_literals(client, token):
    response = client.post(
        "/predict/iris",
        content=f'{{"features": [{token}, 3.5, 1.4, 0.2]}}',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 422, "finite")


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"features": [5.1, 3.5', 422, "body is not valid JSON: Expecting ',' delimiter at character 22"),
        (b"", 422, "body: Field required"),
        (b"\xff\xfe", 422, "body is not valid JSON: Expecting value at character 0"),
        # Too deep for the JSON parser's recursion: FastAPI's own refusal of an unparsable body.
        (b"[" * 30_000 + b"]" * 30_000, 400, "error parsing the body"),
        # Past the most a request to the model needs (iris: 67,328 bytes), not even read.
        (b"[" * 100_000 + b"]" * 100_000, 413, "JSON body over 67328 bytes, the most a request to"),
        (b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "error parsing the body"),
    ],
)
def test_malformed_or_deeply_nested_json(client, body, status, detail):
    response = client.post("/predict/iris", content=body, headers={"content-type": "application/json"})
    assert_error(response, status, detail)


@pytest.mark.parametrize(
    "headers", [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}]
)
def test_features_must_be_declared_json(client, headers):
    body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
    assert_error(client.post("/predict/iris", content=body, headers=headers), 415, "JSON")
    assert_error(client.post("/predict/iris", files={"file": GOOD_IMAGE}), 415)


@pytest.mark.parametrize("query", ["top_k=0", "top_k=-1", "top_k=abc", "top_k=1.5"])
def test_bad_top_k(client, query):
    assert_error(client.post(f"/predict/iris?{query}", json=GOOD_FEATURES), 422, "top_k")


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, status, detail",
    [
        ("get", "/nowhere", 404, "not found"),
        ("post", "/predict/unknown", 404, "no model named 'unknown'"),
        ("post", "/predict/image/unknown", 404, "no model named 'unknown'"),
        ("post", "/predict/..%2F..%2Fetc", 404, ""),
        ("post", "/predict/%2E%2E", 404, "no model named '..'"),
        ("post", "/predict/cifar10", 404, "takes images"),
        ("post", "/predict/image/iris", 404, "takes features"),
        ("get", "/predict/iris", 405, "method not allowed: /predict/iris takes POST"),
        ("delete", "/models", 405, "method not allowed: /models takes GET"),
        ("put", "/predict/image", 405, "method not allowed: /predict/image takes POST"),
    ],
)
def test_routing_errors(client, method, path, status, detail):
    kwargs = {"json": GOOD_FEATURES} if method == "post" and "image/" not in path else {}
    if path.startswith("/predict/image/"):
        kwargs = {"files": {"file": GOOD_IMAGE}}
    assert_error(client.request(method, path, **kwargs), status, detail)


# --- sizes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_body_client(shared_models):
    with serving(shared_models, max_upload_bytes=100_000) as client:
        yield client


def test_body_over_the_cap_by_content_length(small_body_client):
    big = encode(photo(size=(400, 400)), "PNG")
    assert len(big) > 100_000
    assert_error(small_body_client.post("/predict/image", files={"file": big}), 413, "over 100000 bytes")


def test_body_over_the_cap_while_streaming(small_body_client):
    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        yield b'--XYZ\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        for _ in range(200):
            yield bytes(1000)

    response = small_body_client.post(
        "/predict/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=XYZ"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "over 100000 bytes")
    assert_error(
        small_body_client.post(
            "/predict/iris", content=chunks(), headers={"content-type": "application/json"}
        ),
        413,
    )


def flower_of_size(size: int) -> bytes:
    """A valid /predict/iris body of exactly `size` bytes (JSON padded with spaces)."""
    body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_cap_is_taken_and_one_byte_more_is_not(small_body_client, streamed):
    def post(body: bytes):
        content = iter([body[:50_000], body[50_000:]]) if streamed else body
        response = small_body_client.post(
            "/predict/iris", content=content, headers={"content-type": "application/json"}
        )
        assert ("content-length" in response.request.headers) != streamed
        return response

    # The route's own JSON cap (16 rows of iris's 4 features as JSON: 67,328 bytes) is the
    # smaller of its two caps here; the upload cap (100,000) bounds it too.
    assert post(flower_of_size(67_328)).json()["model"] == "iris"
    assert_error(post(flower_of_size(67_329)), 413, "JSON body over 67328 bytes")


def test_body_under_the_cap_is_fine(small_body_client):
    assert small_body_client.post("/predict/image", files={"file": GOOD_IMAGE}).status_code == 200


# --- load and readiness ---------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(shared_models, monkeypatch):
    with serving(shared_models, max_batch_size=1, max_queue_size=2) as client:
        predictor = client.app.state.registry.models["iris"].predictor
        gate, entered = threading.Event(), threading.Event()
        compute = predictor.predict

        def held(batch):
            entered.set()
            gate.wait(10)
            return compute(batch)

        monkeypatch.setattr(predictor, "predict", held)
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(client.post, "/predict/iris", json=GOOD_FEATURES)
            assert entered.wait(10)  # the model is busy with the first request
            queued = [pool.submit(client.post, "/predict/iris", json=GOOD_FEATURES) for _ in range(2)]
            wait_for(lambda: client.app.state.registry.models["iris"].batcher.queued == 2, timeout=10)
            refused = client.post("/predict/iris", json=GOOD_FEATURES)
            gate.set()
            assert_error(refused, 503, "rows waiting")
            assert refused.headers["retry-after"] == "1"
            assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]


# --- last resort ----------------------------------------------------------------------------


def test_an_unexpected_failure_is_a_json_500_and_the_service_carries_on(shared_models, monkeypatch):
    with serving(shared_models) as client:
        predictor = client.app.state.registry.models["iris"].predictor
        monkeypatch.setattr(predictor, "predict", lambda batch: 1 / 0)
        assert_error(client.post("/predict/iris", json=GOOD_FEATURES), 500, "internal error")
        monkeypatch.undo()
        assert client.post("/predict/iris", json=GOOD_FEATURES).status_code == 200
        metrics = client.get("/metrics").text
        assert 'service_errors_total{kind="inference"} 1.0' in metrics
        assert 'service_errors_total{kind="unhandled"} 1.0' in metrics


class Unexpected(BaseException):
    """Not an Exception: gets past the batcher's per-batch handling and stops its task."""


@pytest.mark.timeout(60)  # without supervision the request waits forever
def test_a_crashed_batcher_fails_its_requests_with_503_and_is_replaced(shared_models, monkeypatch, caplog):
    with serving(shared_models) as client:
        served = client.app.state.registry.models["iris"]
        crashed_batcher = served.batcher

        def crash(batch):
            raise Unexpected("the model call went wrong in a way nobody planned for")

        monkeypatch.setattr(served.predictor, "predict", crash)
        with caplog.at_level(logging.ERROR, logger="service.registry"):
            response = client.post("/predict/iris", json=GOOD_FEATURES)
        assert_error(response, 503, "batcher stopped unexpectedly")
        assert response.headers["retry-after"] == "1"
        assert "batcher of model iris stopped unexpectedly" in caplog.text
        assert crashed_batcher.crashed is not None and served.batcher is not crashed_batcher
        monkeypatch.undo()
        assert client.get("/readyz").status_code == 200
        assert client.post("/predict/iris", json=GOOD_FEATURES).status_code == 200


def test_a_subclass_of_a_domain_error_has_its_parents_status():
    class NoSuchVersion(UnknownModel):
        pass

    assert status_of(NoSuchVersion("x")) == 404
    assert status_of(Crashed("x")) == 503


def test_every_size_limit_is_a_413():
    for error in (BodyTooLarge("x"), ImageTooLarge("x"), BudgetExceeded("x"), TooManyRows(16)):
        assert status_of(error) == 413, error


def test_every_busy_or_not_ready_state_is_a_503_that_says_when_to_retry():
    for error in (ModelNotReady("x"), QueueFull("x", 1), Closed("x"), Crashed("x"), DecoderBusy("x")):
        assert status_of(error) == 503, error
    assert headers_of(503) == {"Retry-After": "1"} and headers_of(429) is None


def test_a_features_body_that_fits_no_form_is_told_the_forms_and_the_models_feature_names(client):
    response = client.post("/predict/iris", json={"features": "x"})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        'features: Input should be a valid list; expected {"features": [...]}, {"instances": [[...], ...]}'
        " or an object of features by name (sepal_length, sepal_width, petal_length, petal_width)"
    )
    not_json = client.post("/predict/iris", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and "expected" not in not_json.json()["detail"]  # no forms to name


@pytest.mark.parametrize("gone", [UnknownModel("removed"), ModelNotReady("reloading")])
def test_a_model_gone_while_its_bad_features_body_is_answered_still_gets_the_forms(client, monkeypatch, gone):
    get = client.app.state.registry.get
    calls = []

    def gone_after_the_first_look(name):  # the route found it; the error handler does not
        calls.append(name)
        if len(calls) > 1:
            raise gone
        return get(name)

    monkeypatch.setattr(client.app.state.registry, "get", gone_after_the_first_look)
    response = client.post("/predict/iris", json={"features": "x"})
    forms = 'expected {"features": [...]}, {"instances": [[...], ...]} or an object of features by name'
    assert response.status_code == 422 and response.json()["detail"].endswith(forms)


def test_uploads_never_touch_the_disk(client, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    # Spooled files roll over to tempfile.TemporaryFile, looked up when they do.
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    big = encode(photo(size=(1024, 1024)), "PNG")  # over Starlette's 1 MB spooling threshold
    assert len(big) > 1024 * 1024
    assert client.post("/predict/image", files={"file": big}).status_code == 200


def test_an_rpc_another_layer_aborted_is_counted_as_the_status_its_code_stands_for():
    """(gRPC health's NOT_FOUND for a name it never served is counted 404, as REST's would be.)"""
    assert status_of_grpc_code(grpc.StatusCode.NOT_FOUND) == 404
    for code in set(GRPC_CODES.values()):
        assert grpc_code_of(status_of_grpc_code(code)) == code
    assert status_of_grpc_code(grpc.StatusCode.ABORTED) == 500  # none of the service's own


def test_the_openapi_document_lists_every_error_a_protocol_route_answers(client):
    """Each in the protocols' shape, `{"error": ...}`: the faults' statuses, and the body limits'
    408 and 413 and the media type's 415, which the HTTP layer raises."""
    answered = {str(status) for status in STATUS.values()} | {"408", "413", "415"}
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in [("/v2/models/{model}/infer", "post"), ("/v1/models/{model}:predict", "post")]:
        responses = paths[path][method]["responses"]
        errors = {status for status in responses if status[0] == "4" or status[0] == "5"}
        assert answered <= errors, path
        for status in errors:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ProtocolError"}, (path, status)
