"""How a validation error is located for the client: where they put the value, in one line,
without the source pydantic adds or a union's tag they never sent (service.faults)."""

from __future__ import annotations

import pytest

from service.faults import validation_message


def error(loc: tuple, kind: str = "float_type", msg: str = "Input should be a valid number", **extra) -> dict:
    return {"loc": loc, "type": kind, "msg": msg, **extra}


@pytest.mark.parametrize(
    ("loc", "tags", "expected"),
    [
        (("body", "features", 0), (), "features[0]: Input should be a valid number"),
        (("body", "instances", 0, 1), (), "instances[0][1]: Input should be a valid number"),
        (("body", "inputs", 0, "shape"), (), "inputs[0].shape: Input should be a valid number"),
        (("body",), (), "body: Input should be a valid number"),  # the whole body: the source stays
        (("query", "top_k"), (), "top_k: Input should be a valid number"),
        (("features", 0), (), "features[0]: Input should be a valid number"),  # no source at all
        ((), (), "body: Input should be a valid number"),
        (
            ("body", "OneInstance", "features", 0),
            ("OneInstance",),
            "features[0]: Input should be a valid number",
        ),
        (
            ("body", "OneInstance", "features"),
            ("OneInstance",),
            "features: Input should be a valid number",
        ),
        (
            ("body", "OneInstance"),
            ("OneInstance",),
            "OneInstance: Input should be a valid number",
        ),  # nothing after it
        (
            ("body", "features", "OneInstance"),
            ("OneInstance",),
            "features.OneInstance: Input should be a valid number",
        ),
    ],
)
def test_an_error_is_located_where_the_client_put_the_value(loc, tags, expected):
    assert validation_message([error(loc)], tags) == expected


def test_several_errors_are_one_line():
    errors = [error(("body", "features", 0)), error(("body", "features", 2), msg="Field required")]
    assert (
        validation_message(errors)
        == "features[0]: Input should be a valid number; features[2]: Field required"
    )


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("body", 22), "body is not valid JSON: Expecting ',' delimiter at character 22"),
        (("body", "x"), "body is not valid JSON: Expecting ',' delimiter"),
        ((22,), "body is not valid JSON: Expecting ',' delimiter"),  # a position alone is not located
    ],
)
def test_malformed_json_names_the_parsers_complaint_and_where(loc, expected):
    invalid = error(
        loc, kind="json_invalid", msg="JSON decode error", ctx={"error": "Expecting ',' delimiter"}
    )
    assert validation_message([invalid, error(("body", "features", 0))]) == (
        expected + "; features[0]: Input should be a valid number"
    )
    assert validation_message([error(("body", 3), kind="json_invalid")]) == (
        "body is not valid JSON: syntax error at character 3"
    )
