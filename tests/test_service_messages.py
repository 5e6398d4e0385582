"""What a client reads when something is off: the service's own limits and words, the field it
actually sent, HEAD on the health checks, and documentation routes counted by their path."""

from __future__ import annotations

import pytest
from deployments import samples, serving, value
from payloads import GOOD_FEATURES, assert_error, png_declaring


def test_an_oversized_image_is_refused_by_the_service_cap_not_pillows(client):
    # 400 M pixels: over Pillow's own decompression-bomb limit (179 M) as well as the service's.
    response = client.post("/predict/image", files={"file": ("big.png", png_declaring(20_000, 20_000))})
    assert_error(response, 413, "20000x20000 image: 400,000,000 pixels, more than the 50,000,000 allowed")
    assert "decompression bomb" not in response.text.lower()


@pytest.mark.parametrize(
    "body, field",
    [
        ({**GOOD_FEATURES, "foo": 1}, "foo"),
        ({"features": ["5.1", 3.5, 1.4, 0.2]}, "features[0]"),
        ({"features": "5.1,3.5,1.4,0.2"}, "features"),
        ({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, None, 5.2, 2.3]]}, "instances[1][1]"),
        ({"instances": [[5.1, 3.5, 1.4, 0.2]], "foo": 1}, "foo"),
        ({"sepal_length": "5.1"}, "sepal_length"),
    ],
)
def test_validation_errors_name_the_field_as_sent_and_the_accepted_shapes(client, body, field):
    response = client.post("/predict/iris", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ")
    assert '{"features": [...]}, {"instances": [[...], ...]} or an object of features by name' in detail
    assert detail.endswith("(sepal_length, sepal_width, petal_length, petal_width)")


def test_a_misspelt_form_names_the_forms_and_features_expected(client):
    detail = client.post("/predict/iris", json={"feature": [5.1, 3.5, 1.4, 0.2]}).json()["detail"]
    assert detail.startswith("feature: ")
    assert '{"features": [...]}' in detail
    assert "sepal_length, sepal_width, petal_length, petal_width" in detail


def test_query_errors_name_the_parameter(client):
    detail = client.post("/predict/iris?top_k=0", json=GOOD_FEATURES).json()["detail"]
    assert detail.startswith("top_k: ") and "features" not in detail


def test_malformed_json_is_called_so_and_located(client):
    response = client.post(
        "/predict/iris", content=b'{"features": [5.1, 3.5', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "body is not valid JSON: ")
    assert "at character" in response.json()["detail"] and "JSON decode error" not in response.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_checks_answer_head(client, path):
    response = client.head(path)
    assert response.status_code == 200
    assert response.content == b""
    assert client.get(path).status_code == 200


def test_head_on_readyz_says_not_ready_too(model_dir):
    with serving(model_dir / "nowhere", ready=False) as fresh:
        assert fresh.head("/readyz").status_code == 503


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc"])
def test_documentation_routes_are_counted_by_their_path(client, path):
    before = samples(client)
    assert client.get(path).status_code == 200
    after = samples(client)
    labels = {"route": path, "method": "GET", "status": "200", "protocol": "native"}
    key = ("http_requests_total", tuple(sorted(labels.items())))
    # a counter's series appears with its first increment
    assert value(after, "http_requests_total", **labels) - before.get(key, 0.0) == 1
    unmatched = ("http_requests_total", tuple(sorted({**labels, "route": "unmatched"}.items())))
    assert after.get(unmatched, 0.0) == before.get(unmatched, 0.0)
