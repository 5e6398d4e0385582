"""Generated input: Hypothesis against /predict/iris, Schemathesis against the OpenAPI schema."""

from __future__ import annotations

import json
import math

import pytest
import schemathesis
from deployments import service_settings, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payloads import REFUSAL_STATUSES, no_stated_deadline
from schemathesis import GenerationMode

from service.app import create_app
from training.data import IRIS_FEATURES

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
feature_keys = st.sampled_from(["features", "instances", *IRIS_FEATURES]) | st.text(max_size=12)
shaped_bodies = st.dictionaries(feature_keys, json_values, max_size=5)


@PROPERTY
@given(body=json_values | shaped_bodies)
def test_any_json_body_gets_an_answer_never_a_server_error(client, body):
    # Python's encoder writes NaN and Infinity as the bare literals many JSON parsers accept.
    response = client.post(
        "/predict/iris", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 422), response.text
    assert (
        "detail" in response.json() or "probabilities" in response.json() or "predictions" in response.json()
    )


@PROPERTY
@given(features=st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4))
def test_plausible_features_get_probabilities_that_sum_to_one(client, features):
    response = client.post("/predict/iris", json={"features": features})
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities = body["probabilities"]
    assert math.isclose(sum(probabilities.values()), 1, abs_tol=1e-5)
    assert all(0 <= p <= 1 for p in probabilities.values())
    assert body["label"] == max(probabilities, key=probabilities.get)


@PROPERTY
@given(
    rows=st.lists(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
        min_size=1,
        max_size=16,
    )
)
def test_any_finite_features_are_scored_or_refused_clearly(client, rows):
    response = client.post("/predict/iris", json={"instances": rows})
    if response.status_code == 422:  # too large for float32, or overflowing inside the model
        assert "finite" in response.json()["detail"]
    else:
        assert response.status_code == 200
        for prediction in response.json()["predictions"]:
            assert math.isclose(sum(prediction["probabilities"].values()), 1, abs_tol=1e-5)


# Schema-violating requests must be refused with a 4xx, and 413 is one: an upload of more than
# MAX_BATCH_SIZE parts is refused as too large before its missing `file` part would be noticed.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [*REFUSAL_STATUSES, "5xx"],
            }
        }
    }
)


@pytest.fixture
def api_schema(shared_models):
    app = create_app(service_settings(shared_models))
    # Starts the app's lifespan, which Schemathesis' pytest plugin ends after each test.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    wait_for(lambda: getattr(app.state, "registry", None) and app.state.registry.ready)
    return schema


# The schema cannot say how many features a model takes or which models exist (both come from
# the models at run time), so a schema-valid body may still get 404 or 422: positive data
# acceptance is not checked. Every other default check is: no server errors, documented status
# codes, content types and headers, and response bodies matching their schemas.
# (Schemathesis' `from_fixture` pytest integration fails under pytest 9, hence a plain test.)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(api_schema, mode):
    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=api_schema.as_strategy(mode))
    def conforms(case):
        no_stated_deadline(case)
        case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

    conforms()
