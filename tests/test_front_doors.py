"""The same fault through every front door (the native routes, v2 JSON, v2 binary, TF Serving)
gets the same status and the same message, each in its protocol's shape: `{"detail": ...}` on
the native routes, `{"error": ...}` on v2 and TF Serving. One data plane, one error table."""

from __future__ import annotations

import ast
import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from deployments import install, serving
from payloads import GOOD_IMAGE, png_declaring

SERVICE = Path(__file__).resolve().parents[1] / "service"
FLOWER = [5.1, 3.5, 1.4, 0.2]
IMAGE_DOORS = ("native", "v2 json", "v2 binary", "tfserving")


def native_image(client, files: list[bytes], model: str = "cifar10"):
    return client.post(f"/predict/image/{model}", files=[("file", file) for file in files])


def native_features(client, rows: list[list[float]], model: str = "iris"):
    return client.post(f"/predict/{model}", json={"instances": rows})


def v2_json(client, name: str, datatype: str, shape: list[int], data: list, path: str = "iris", **extra):
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data, **extra}
    return client.post(f"/v2/models/{path}/infer", json={"inputs": [tensor]})


def v2_binary(client, name: str, datatype: str, shape: list[int], blob: bytes, path: str = "iris"):
    """Triton's binary tensor data extension, as tritonclient sends it."""
    tensor = {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(blob)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return client.post(
        f"/v2/models/{path}/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def tfserving(client, instances: list, path: str = "iris"):
    return client.post(f"/v1/models/{path}:predict", json={"instances": instances})


def image_files(client, door: str, files: list[bytes], model: str = "cifar10"):
    """Encoded image files through one door."""
    if door == "native":
        return native_image(client, files, model)
    if door == "v2 json":
        data = [base64.b64encode(file).decode() for file in files]
        return v2_json(
            client, "image_bytes", "BYTES", [len(files)], data, model, parameters={"content_type": "base64"}
        )
    if door == "v2 binary":
        blob = b"".join(struct.pack("<I", len(file)) + file for file in files)
        return v2_binary(client, "image_bytes", "BYTES", [len(files)], blob, model)
    return tfserving(client, [{"b64": base64.b64encode(file).decode()} for file in files], model)


def feature_rows(client, door: str, rows: np.ndarray, model: str = "iris"):
    """Rows of features through one door."""
    shape = list(rows.shape)
    if door == "native":
        return native_features(client, rows.tolist(), model)
    if door == "v2 json":
        return v2_json(client, "features", "FP32", shape, rows.ravel().tolist(), model)
    if door == "v2 binary":
        return v2_binary(client, "features", "FP32", shape, rows.astype("<f4").tobytes(), model)
    return tfserving(client, rows.tolist(), model)


def answer(door: str, response) -> tuple[int, str]:
    """The status and the message, after checking the door's error shape."""
    key = "detail" if door == "native" else "error"
    body = response.json()
    assert set(body) == {key}, (door, body)
    assert isinstance(body[key], str), (door, body)
    assert response.content.endswith(b"\n")
    return response.status_code, body[key]


def assert_same_everywhere(answers: dict[str, tuple[int, str]], status: int, message: str) -> None:
    for door, (got_status, got_message) in answers.items():
        assert got_status == status, (door, got_status, got_message)
        assert got_message.startswith(message), (door, got_message)  # nothing before it ("image 1: ")
    assert len({text for _, text in answers.values()}) == 1, answers


# The client fixture's app takes at most 16 rows per request and 50,000,000 pixels per image.
IMAGE_FAULTS = [
    pytest.param(
        [png_declaring(10_000, 10_000)],
        413,
        "10000x10000 image: 100,000,000 pixels, more than the 50,000,000 allowed",
        id="over the pixel cap",
    ),
    pytest.param(
        [b"this is text, not an image"], 415, "not an image in an accepted format", id="not an image"
    ),
    pytest.param([GOOD_IMAGE[: len(GOOD_IMAGE) // 2]], 400, "cannot decode the PNG image", id="truncated"),
    pytest.param([GOOD_IMAGE, b""], 400, "image 2: empty file", id="the second of two is empty"),
    pytest.param([GOOD_IMAGE] * 17, 413, "more than 16 instances in one request", id="too many images"),
]


@pytest.mark.parametrize(("files", "status", "message"), IMAGE_FAULTS)
def test_an_image_fault_is_answered_alike_by_every_door(client, files, status, message):
    answers = {door: answer(door, image_files(client, door, files)) for door in IMAGE_DOORS}
    assert_same_everywhere(answers, status, message)


FEATURE_FAULTS = [
    pytest.param(
        np.ones((1, 3), np.float32),
        422,
        "input 'features' must have shape [n, 4] (sepal_length, sepal_width, petal_length, petal_width);"
        " got [1, 3]",
        id="wrong shape",
    ),
    pytest.param(
        np.ones((17, 4), np.float32), 413, "more than 16 instances in one request", id="too many rows"
    ),
    pytest.param(np.ones((0, 4), np.float32), 422, "no instances to classify", id="no rows"),
]


@pytest.mark.parametrize(("rows", "status", "message"), FEATURE_FAULTS)
def test_a_features_fault_is_answered_alike_by_every_door(client, rows, status, message):
    answers = {door: answer(door, feature_rows(client, door, rows)) for door in IMAGE_DOORS}
    assert_same_everywhere(answers, status, message)


def test_an_unknown_model_is_answered_alike_by_every_door(client):
    rows = np.array([FLOWER], np.float32)
    answers = {
        "native image": answer("native", native_image(client, [GOOD_IMAGE], "tulip")),
        **{door: answer(door, feature_rows(client, door, rows, "tulip")) for door in IMAGE_DOORS},
    }
    assert_same_everywhere(answers, 404, "no model named 'tulip'")


def test_a_version_that_is_not_live_is_answered_alike_by_both_protocols(client):
    flower = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FLOWER}
    answers = {
        "v2": answer("v2", client.post("/v2/models/iris/versions/9/infer", json={"inputs": [flower]})),
        "tfserving": answer(
            "tfserving", client.post("/v1/models/iris/versions/9:predict", json={"instances": [FLOWER]})
        ),
        "v2 metadata": answer("v2", client.get("/v2/models/iris/versions/9")),
        "tfserving metadata": answer("tfserving", client.get("/v1/models/iris/versions/9/metadata")),
    }
    assert_same_everywhere(answers, 404, "model 'iris' has no live version 9; version 1 is live")


@pytest.mark.parametrize("version", ["abc", "¹", "+1", "1.0"])
def test_a_version_that_is_not_a_number_is_unknown_to_every_version_route(client, version):
    for path in (f"/v2/models/iris/versions/{version}", f"/v1/models/iris/versions/{version}"):
        status, message = answer("v2", client.get(path))
        assert (status, message) == (
            404,
            f"model 'iris' has no version {version!r}; versions are whole numbers",
        )


def test_a_non_finite_output_is_answered_alike_by_every_door(tmp_path, exports):
    root = tmp_path / "models"
    install(exports["ones"], root, name="iris")  # every weight 1: 4 x 3e38 overflows float32
    huge = np.full((1, 4), 3e38, np.float32)
    with serving(root) as overflowing:
        answers = {door: answer(door, feature_rows(overflowing, door, huge)) for door in IMAGE_DOORS}
    assert_same_everywhere(answers, 422, "the model's output is not finite for these inputs")


@pytest.mark.parametrize(
    "path", ["/v2/models/iris/config", "/v2/nowhere", "/v1/nowhere", "/v1/models/iris/labels"]
)
def test_unknown_paths_under_the_protocols_answer_in_their_shape(client, path):
    # tritonclient's get_model_config reads `error` from a 404 (GET /v2/models/{m}/config).
    assert answer("v2", client.get(path)) == (404, "Not Found")


def test_unknown_paths_elsewhere_answer_in_the_native_shape(client):
    assert answer("native", client.get("/v3/models")) == (404, "Not Found")


def test_every_json_answer_ends_in_a_newline_whichever_door_and_status(client):
    rows = np.array([FLOWER], np.float32)
    answers = {door: feature_rows(client, door, rows) for door in ("native", "v2 json", "tfserving")}
    answers |= {
        "status": client.get("/v1/models/iris"),
        "v2 metadata": client.get("/v2/models/iris"),
        "models": client.get("/models"),
        "ready": client.get("/readyz"),
    }
    for door, response in answers.items():
        assert response.status_code == 200, (door, response.text)
        assert response.headers["content-type"] == "application/json", door
        assert response.content.endswith(b"}\n"), (door, response.content[-20:])


def imports_of(path: Path) -> set[str]:
    """The modules a source file imports, as written; `from a import b` counts as `a` and `a.b`,
    since `b` may be a module (`from service.protocols import v2_routes`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_protocols_call_the_data_plane_never_the_native_routes():
    for path in sorted((SERVICE / "protocols").glob("*.py")):
        assert not any(name.startswith("service.routes") for name in imports_of(path)), path.name


def test_no_grpc_door_depends_on_a_rest_route_module():
    """What a protocol's two doors share lives in its model and codec modules, not in either door."""
    doors = sorted((SERVICE / "protocols").glob("*_grpc.py"))
    assert doors, "no gRPC doors found"
    for path in doors:
        assert not any(name.endswith("_routes") for name in imports_of(path)), path.name


def test_tf_serving_names_its_dtypes_without_tensorflow_or_the_v2_types():
    for name in ("tfserving_routes.py", "tfserving_model.py", "tfserving_codec.py", "tfserving_types.py"):
        imported = imports_of(SERVICE / "protocols" / name)
        assert not any(m.split(".")[0] == "tensorflow" or m.endswith("v2_types") for m in imported), name
