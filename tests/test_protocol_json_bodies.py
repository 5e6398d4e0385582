"""The protocols' JSON bodies against hostile clients: a cap from the largest legitimate
request, refusals from the declared shape, parsing off the event loop, and no parser error
left to become a 500."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest
from starlette.requests import Request

from service import jsonbody
from service.faults import BodyTooLarge, CodecError
from service.protocols import tfserving_routes, v2_routes

V2_IRIS = "/v2/models/iris/infer"
TFS_IRIS = "/v1/models/iris:predict"


def v2_json(shape, data, name="features", datatype="FP32") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def assert_protocol_error(response, status: int, message: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


@pytest.mark.parametrize("path", [TFS_IRIS, V2_IRIS])
def test_json_nested_beyond_the_recursion_limit_is_a_400(client, path):
    body = b'{"instances": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # within the body cap
    assert_protocol_error(client.post(path, content=body), 400)


def test_a_v2_shape_of_70_dimensions_is_a_400_in_json_and_binary(client):
    shape = [1] * 70
    assert_protocol_error(client.post(V2_IRIS, json=v2_json(shape, [1.0])), 400, "70 dimensions")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    response = client.post(
        V2_IRIS,
        content=header + np.float32(1).tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert_protocol_error(response, 400, "70 dimensions")


def test_a_declared_shape_beyond_the_batch_is_refused_before_its_data_is_read(client, monkeypatch):
    converted = []
    monkeypatch.setattr("service.protocols.v2_codec.numeric_array", lambda *a: converted.append(a))
    rows = client.app.state.settings.max_batch_size
    response = client.post(V2_IRIS, json=v2_json([10**9, 4], [1.0] * 8))
    assert_protocol_error(response, 413, f"more than {rows} instances")
    response = client.post(V2_IRIS, json=v2_json([1, 10**9], [1.0] * 8))
    assert_protocol_error(response, 422, f"at most {rows * 4}")  # rows of 4 features
    assert converted == []


@pytest.mark.parametrize("path", [TFS_IRIS, V2_IRIS])
def test_a_json_body_over_the_models_cap_is_a_413_without_reading_it(client, path):
    predictor = client.app.state.registry.get("iris").predictor
    cap = jsonbody.json_cap(predictor, client.app.state.settings.max_batch_size)
    assert cap < 100_000  # 128 rows of 4 floats, and the envelope
    body = b'{"instances": [' + b"1.0, " * (cap // 5) + b"1.0]}"
    assert_protocol_error(client.post(path, content=body), 413, f"over {cap} bytes")


def test_the_cap_holds_128_images_as_json_writes_them():
    images = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3)).tolist()
    largest = len(json.dumps(v2_json([128, 32, 32, 3], images, name="image", datatype="UINT8")))
    cifar10 = SimpleNamespace(input_shape=(32, 32, 3), input_dtype=np.dtype(np.uint8))
    assert 2_000_000 < largest <= jsonbody.json_cap(cifar10, 128) < 1.3 * largest


@pytest.mark.parametrize("path", ["/v1/models/cifar10:predict", "/v2/models/cifar10/infer"])
def test_a_full_batch_of_images_as_json_numbers_is_served(client, path):
    rows = client.app.state.settings.max_batch_size
    images = np.random.default_rng(0).integers(0, 256, (rows, 32, 32, 3)).tolist()
    if path.startswith("/v1"):
        body = {"instances": images}
    else:
        body = v2_json([rows, 32, 32, 3], images, name="image", datatype="UINT8")
    assert client.post(path, content=json.dumps(body).encode()).status_code == 200


@pytest.mark.parametrize(
    "module, parser, path, body",
    [
        (tfserving_routes, "parse_predict", TFS_IRIS, {"instances": [[1.0, 2.0, 3.0, 4.0]]}),
        (v2_routes, "parse_request", V2_IRIS, v2_json([1, 4], [1.0, 2.0, 3.0, 4.0])),
    ],
)
def test_bodies_are_parsed_off_the_event_loop(client, monkeypatch, module, parser, path, body):
    parse, on_the_loop = getattr(module, parser), []

    def watched(*args):
        try:
            asyncio.get_running_loop()  # only the event loop's own thread has one
            on_the_loop.append(True)
        except RuntimeError:
            on_the_loop.append(False)
        return parse(*args)

    monkeypatch.setattr(module, parser, watched)
    assert client.post(path, json=body).status_code == 200
    assert on_the_loop == [False]


# --- the cap and the reader, unit by unit -----------------------------------------------------


def test_the_cap_is_the_largest_legitimate_request_plus_its_envelope():
    """Worked out by hand: 6 characters per uint8 value ("255, "), 28 per float32 (a full repr
    and its separator), 14 per integer, 7 per boolean, 64 KiB for the names, shape and parameters."""
    images = SimpleNamespace(input_shape=(32, 32, 3), input_dtype=np.dtype("uint8"))
    flowers = SimpleNamespace(input_shape=(4,), input_dtype=np.dtype("float32"))
    counts = SimpleNamespace(input_shape=(10,), input_dtype=np.dtype("int64"))
    assert jsonbody.json_cap(images, 128) == 128 * 3072 * 6 + 65_536 == 2_424_832
    assert jsonbody.json_cap(flowers, 128) == 128 * 4 * 28 + 65_536 == 79_872
    assert jsonbody.json_cap(counts, 2) == 2 * 10 * 14 + 65_536
    switches = SimpleNamespace(input_shape=(3,), input_dtype=np.dtype("bool"))
    assert jsonbody.json_cap(switches, 1) == 3 * 7 + 65_536  # "false, "
    unusual = SimpleNamespace(input_shape=(2,), input_dtype=np.dtype("complex64"))
    assert jsonbody.json_cap(unusual, 1) == 2 * 28 + 65_536  # a float's share for any other kind


def request_with(body: bytes, declared: bool) -> Request:
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    headers = [(b"content-length", str(len(body)).encode())] if declared else []
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_cap_is_read_and_one_byte_more_is_refused(declared):
    assert asyncio.run(jsonbody.read_capped(request_with(b"x" * 1000, declared), 1000)) == b"x" * 1000
    with pytest.raises(BodyTooLarge, match="JSON body over 1000 bytes"):
        asyncio.run(jsonbody.read_capped(request_with(b"x" * 1001, declared), 1000))


def test_a_parsers_failure_is_the_clients_with_its_message_cut_at_200_characters():
    def parse():
        raise ValueError("v" * 500)

    with pytest.raises(CodecError) as refused:
        asyncio.run(jsonbody.parse_off_the_loop(parse))
    assert str(refused.value) == "malformed request: ValueError: " + "v" * 200
