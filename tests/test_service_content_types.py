"""What counts as a JSON body: the media type, whatever its parameters, and any `+json` type."""

from __future__ import annotations

import json

import pytest
from payloads import GOOD_FEATURES, assert_error


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON ; charset=utf-8",
        "application/vnd.api+json",
        "application/merge-patch+json; charset=utf-8",
    ],
)
def test_a_json_media_type_is_accepted_with_or_without_parameters(client, content_type):
    response = client.post(
        "/predict/iris", content=json.dumps(GOOD_FEATURES), headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "content_type",
    ["text/plain; charset=application/json", "text/plain; profile=x+json", "application/jsonp", "json"],
)
def test_json_named_only_in_a_parameter_or_as_part_of_a_word_is_refused(client, content_type):
    response = client.post(
        "/predict/iris", content=json.dumps(GOOD_FEATURES), headers={"content-type": content_type}
    )
    assert_error(response, 415, "expected a JSON body (Content-Type: application/json)")
