"""TensorFlow Serving's REST API against `python -m service` on a real port: by hand, as TF
Serving's own docs show it, and through KServe's v1 client. Answers are checked against the
service's own routes and against what TF Serving returns for the same export."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from deployments import install
from kserve import InferenceRESTClient, RESTConfig
from served import running_service

from service.faults import CodecError, UnfitInput
from service.images import decode_image
from service.protocols.tfserving_codec import COLUMNAR, ROW, binary_value, encode_predict, parse_predict
from service.protocols.tfserving_model import Signature, Tensor, output_names, status
from service.registry import ModelState

SAMPLES = sorted(Path(__file__).resolve().parents[1].glob("samples/*.jpg"))
assert len(SAMPLES) >= 3, "samples/ (a link to service/static/samples/) holds the sample photos"
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]


# --- the codec alone ------------------------------------------------------------------------


def test_row_and_columnar_forms_give_the_instances_of_the_one_input():
    assert parse_predict(b'{"instances": [[1, 2], [3, 4]]}', "x").instances == [[1, 2], [3, 4]]
    assert parse_predict(b'{"instances": [{"x": [1, 2]}]}', "x").instances == [[1, 2]]
    columnar = parse_predict(b'{"inputs": {"x": [[1, 2]]}, "signature_name": "s"}', "x")
    assert (columnar.form, columnar.instances, columnar.signature_name) == (COLUMNAR, [[1, 2]], "s")
    assert parse_predict(b'{"inputs": [[1, 2]]}', "x").form == COLUMNAR
    assert parse_predict(b'{"instances": [{"b64": "AA=="}]}', "x").instances == [{"b64": "AA=="}]


def test_binary_values_are_base64_in_either_alphabet():
    assert binary_value({"b64": base64.b64encode(b"\xfb\xff").decode()}) == b"\xfb\xff"
    assert binary_value({"b64": base64.urlsafe_b64encode(b"\xfb\xff").decode()}) == b"\xfb\xff"
    assert binary_value([1, 2]) is None
    with pytest.raises(CodecError, match="not valid base64"):
        binary_value({"b64": "!!"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nope", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b"{}", "got neither"),
        (b'{"instances": [], "inputs": []}', "got both"),
        (b'{"instances": 3}', "must be a list"),
        (b'{"inputs": 3}', "must be a list"),
        (b'{"instances": [{"y": 1}]}', "instance names inputs 'y'; the signature has one input, 'x'"),
        (b'{"inputs": {"x": [1], "y": [2]}}', "names inputs 'x', 'y'; the signature has one input, 'x'"),
        (b'{"inputs": {}}', "names inputs none; the signature has one input, 'x'"),
        (b'{"instances": [1], "signature_name": 3}', "signature_name"),
    ],
)
def test_malformed_predict_bodies_are_refused(body, message):
    with pytest.raises(CodecError, match=re.escape(message)):
        parse_predict(body, "x")


def test_answers_name_the_single_output_by_format():
    probabilities = {"probabilities": np.array([[0.25, 0.75]], np.float32)}
    assert json.loads(encode_predict(ROW, probabilities)) == {"predictions": [[0.25, 0.75]]}
    assert json.loads(encode_predict(COLUMNAR, probabilities)) == {"outputs": [[0.25, 0.75]]}


def test_several_outputs_are_named_in_each_instance_or_for_the_batch():
    outputs = {
        "probabilities": np.array([[0.25, 0.75], [1.0, 0.0]], np.float32),
        "abstain": np.array([True, False]),
    }
    assert json.loads(encode_predict(ROW, outputs)) == {
        "predictions": [
            {"probabilities": [0.25, 0.75], "abstain": True},
            {"probabilities": [1.0, 0.0], "abstain": False},
        ]
    }
    assert json.loads(encode_predict(COLUMNAR, outputs)) == {
        "outputs": {"probabilities": [[0.25, 0.75], [1.0, 0.0]], "abstain": [True, False]}
    }


# --- against the real server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory, exports):
    model_dir = tmp_path_factory.mktemp("tfserving") / "models"
    for name in ("cifar10", "iris"):
        install(exports[name], model_dir)
    with running_service(
        model_dir, tmp_path_factory.getbasetemp() / "tfs-server.log", MAX_BATCH_SIZE="16"
    ) as url:
        yield url


def native_probabilities(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    body = response.json()
    return [list(p["probabilities"].values()) for p in body.get("predictions", [body])]


@pytest.mark.server
def test_model_status_lists_the_live_version_as_available(base):
    response = httpx.get(f"{base}/v1/models/cifar10")
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ],
        "ready": True,
    }
    assert httpx.get(f"{base}/v1/models/cifar10/versions/1").json()["ready"] is True
    assert httpx.get(f"{base}/v1/models/cifar10/versions/2").status_code == 404


def test_model_status_lists_rejected_versions_newest_first_with_why():
    rejected = {2: "no saved_model.pb", 3: "bad metadata"}
    state = ModelState("m", None, [1, 2, 3], None, rejected, "none loaded")
    answer = status(state, None)
    assert answer.ready is False
    assert [
        (v.version, v.state, v.status.error_code, v.status.error_message) for v in answer.model_version_status
    ] == [
        ("3", "END", "UNKNOWN", "bad metadata"),
        ("2", "END", "UNKNOWN", "no saved_model.pb"),
    ]


@pytest.mark.server
def test_metadata_is_the_exports_serving_signature(base):
    body = httpx.get(f"{base}/v1/models/cifar10/metadata").json()
    assert body["model_spec"] == {"name": "cifar10", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["image"] == {  # a TensorInfo as TF Serving writes it
        "dtype": "DT_UINT8",
        "tensor_shape": {
            "dim": [{"size": s, "name": ""} for s in ("-1", "32", "32", "3")],
            "unknown_rank": False,
        },
    }
    assert list(signature["outputs"]) == ["probabilities"]
    assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"


@pytest.mark.server
def test_row_format_features_match_predict_iris(base):
    # As TF Serving's docs call it: `curl -d`, which declares a form body; it is read as JSON.
    response = httpx.post(
        f"{base}/v1/models/iris:predict",
        content=json.dumps({"instances": FLOWERS}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    expected = native_probabilities(httpx.post(f"{base}/predict/iris", json={"instances": FLOWERS}))
    assert response.json() == {"predictions": expected}


@pytest.mark.server
def test_columnar_format_answers_outputs(base):
    response = httpx.post(f"{base}/v1/models/iris/versions/1:predict", json={"inputs": {"features": FLOWERS}})
    expected = native_probabilities(httpx.post(f"{base}/predict/iris", json={"instances": FLOWERS}))
    assert response.json() == {"outputs": expected}


@pytest.mark.server
def test_b64_images_and_pixel_lists_match_predict_image(base):
    files = [path.read_bytes() for path in SAMPLES[:3]]
    expected = native_probabilities(httpx.post(f"{base}/predict/image", files=[("file", f) for f in files]))
    encoded = [{"b64": base64.b64encode(f).decode()} for f in files]
    response = httpx.post(f"{base}/v1/models/cifar10:predict", json={"instances": encoded})
    assert response.json() == {"predictions": expected}
    pixels = [decode_image(f, (32, 32), 10**8).tolist() for f in files]
    mixed = [pixels[0], encoded[1], {"image": pixels[2]}]  # any mix of the forms
    response = httpx.post(
        f"{base}/v1/models/cifar10:predict", json={"instances": mixed, "signature_name": "serving_default"}
    )
    assert response.json() == {"predictions": expected}


@pytest.mark.server
def test_kserve_v1_client_predicts_and_sees_the_model_ready(base):
    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v1"))
        try:
            ready = await client.is_model_ready(base, "iris")
            return ready, await client.infer(base, {"instances": FLOWERS}, model_name="iris")
        finally:
            await client.close()

    ready, answer = asyncio.run(run())
    assert ready is True
    assert answer == {
        "predictions": native_probabilities(httpx.post(f"{base}/predict/iris", json={"instances": FLOWERS}))
    }


@pytest.mark.server
def test_tfserving_requests_are_counted_under_their_protocol(base):
    httpx.post(f"{base}/v1/models/iris:predict", json={"instances": FLOWERS[:1]})
    metrics = httpx.get(f"{base}/metrics").text
    assert (
        'http_requests_total{method="POST",protocol="tfserving",route="/v1/models/{model}:predict",status="200"}'
        in metrics
    )


BAD = [
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3]]}, 422, "shape [n, 4]"),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3, "4"]]}, 400, "must be numbers"),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3, 1e39]]}, 422, "finite"),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3, 4]] * 17}, 413, "more than 16 instances"),
    ("/v1/models/iris:predict", {"instances": []}, 422, "no instances"),
    ("/v1/models/iris:predict", {"instances": [{"b64": "AAAA"}]}, 422, "image files are for image models"),
    (
        "/v1/models/iris:predict",
        {"instances": [[1, 2, 3, 4]], "signature_name": "other"},
        422,
        "no signature",
    ),
    ("/v1/models/iris:predict", {"examples": []}, 400, "got neither"),
    ("/v1/models/cifar10:predict", {"instances": [{"b64": "AAAA"}]}, 415, "not an image"),
    ("/v1/models/cifar10:predict", {"instances": [[[[300, 0, 0]] * 32] * 32]}, 400, "within [0, 255]"),
    ("/v1/models/cifar10:predict", {"instances": [[[0, 0, 0]]]}, 422, "shape [n, 32, 32, 3]"),
    ("/v1/models/iris/versions/4:predict", {"instances": [[1, 2, 3, 4]]}, 404, "version 1 is live"),
    ("/v1/models/rose:predict", {"instances": [[1, 2, 3, 4]]}, 404, "no model named 'rose'"),
]


@pytest.mark.server
@pytest.mark.parametrize(("path", "body", "status", "message"), BAD)
def test_bad_requests_get_a_clear_error_as_tf_serving_gives_them(base, path, body, status, message):
    response = httpx.post(base + path, content=json.dumps(body))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.server
def test_nan_is_read_as_tf_serving_reads_it_and_refused_as_input(base):
    response = httpx.post(f"{base}/v1/models/iris:predict", content=b'{"instances": [[NaN, 1, 2, 3]]}')
    assert response.status_code == 422
    assert "finite" in response.json()["error"]


def test_an_unknown_output_is_refused_naming_the_first_asked_for_and_the_signatures():
    scored = SimpleNamespace(output_name="probabilities", ood=SimpleNamespace(output="ood_score"))
    with pytest.raises(UnfitInput) as refused:
        output_names(scored, ["logits", "probabilities", "embedding"])
    assert str(refused.value) == (
        "unknown output 'logits'; the signature has 'probabilities', 'ood_score', 'abstain'"
    )
    assert output_names(scored, []) == ["probabilities"]
    assert output_names(scored, ["abstain", "ood_score"]) == ["abstain", "ood_score"]


def test_a_signature_once_read_cannot_be_changed_by_a_door():
    tensor = Tensor(np.dtype("float32"), [None, 4])
    signature = Signature("serving_default", {"features": tensor}, {"probabilities": tensor})
    for thing, field in [(tensor, "shape"), (signature, "name")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(thing, field, None)
