"""The optional API key, optional CORS, and the documentation endpoints."""

from __future__ import annotations

import pytest
from deployments import serving
from payloads import GOOD_FEATURES, GOOD_IMAGE, assert_error
from starlette.requests import Request


@pytest.fixture(scope="module")
def keyed_client(shared_models):
    with serving(shared_models, api_key="s3cret", cors_origins="https://app.example") as client:
        yield client


def test_without_api_key_setting_predictions_are_open(client):
    assert client.post("/predict/iris", json=GOOD_FEATURES).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic czNjcmV0"},
        {"X-API-Key": ""},
    ],
)
def test_predictions_need_the_key(keyed_client, headers):
    response = keyed_client.post("/predict/iris", json=GOOD_FEATURES, headers=headers)
    assert_error(response, 401, "API key")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(keyed_client.post("/predict/image", files={"file": GOOD_IMAGE}, headers=headers), 401)


@pytest.mark.parametrize("headers", [{"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}])
def test_the_key_opens_predictions(keyed_client, headers):
    assert keyed_client.post("/predict/iris", json=GOOD_FEATURES, headers=headers).status_code == 200
    assert keyed_client.post("/predict/image", files={"file": GOOD_IMAGE}, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict/iris", {"json": GOOD_FEATURES}),
        ("/predict/image", {"files": {"file": GOOD_IMAGE}}),
        ("/v2/models/iris/infer", {"json": {"inputs": []}}),
        ("/v1/models/iris:predict", {"json": {"instances": [[1, 2, 3, 4]]}}),
    ],
)
def test_a_wrong_key_is_refused_before_any_of_the_body_is_read(keyed_client, monkeypatch, path, body):
    read = []
    stream = Request.stream

    def reading(request):  # every way of reading a body (body(), json(), form()) streams it
        read.append(request.url.path)
        return stream(request)

    monkeypatch.setattr(Request, "stream", reading)
    assert keyed_client.post(path, headers={"X-API-Key": "wrong"}, **body).status_code == 401
    assert read == []
    assert keyed_client.post(path, headers={"X-API-Key": "s3cret"}, **body).status_code != 401
    assert read == [path], "the spy sees a body that is read"


def test_the_key_is_checked_before_anything_about_models_is_revealed(keyed_client):
    assert_error(keyed_client.post("/predict/secret-model", json=GOOD_FEATURES), 401)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/models", "/metrics", "/openapi.json", "/docs"])
def test_operations_endpoints_stay_open(keyed_client, path):
    assert keyed_client.get(path).status_code == 200


def test_openapi_declares_the_key(keyed_client):
    schema = keyed_client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"APIKeyHeader", "HTTPBearer"}
    assert schema["paths"]["/predict/{model}"]["post"]["security"]


def test_cors_is_off_unless_configured(client):
    preflight = client.options(
        "/predict/iris", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405
    response = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_configured_origins(keyed_client):
    def preflight(origin):
        return keyed_client.options(
            "/predict/iris",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )

    allowed = preflight("https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight("https://evil.example").status_code == 400


def test_docs_are_served(client):
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/predict/image",
        "/predict/image/{model}",
        "/predict/{model}",
        "/healthz",
        "/readyz",
        "/models",
        "/metrics",
    } <= set(paths)
    assert "multipart/form-data" in paths["/predict/image"]["post"]["requestBody"]["content"]
