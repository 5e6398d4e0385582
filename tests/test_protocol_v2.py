"""Open Inference Protocol v2 against `python -m service` on a real port, through the official
clients (tritonclient's HTTP clients, KServe's InferenceRESTClient) and by hand for bad input.
Every answer is checked against what the service's own routes give for the same input."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from deployments import install
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from served import running_service
from tritonclient.utils import InferenceServerException

from service.images import decode_image

pytestmark = pytest.mark.server  # starts `python -m service`

SAMPLES = sorted(Path(__file__).resolve().parents[1].glob("samples/*.jpg"))
assert len(SAMPLES) >= 3, "samples/ (a link to service/static/samples/) holds the sample photos"
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], np.float32)
MAX_BATCH = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, exports) -> Path:
    root = tmp_path_factory.mktemp("v2") / "models"
    for name in ("cifar10", "iris", "wide"):
        install(exports[name], root)
    return root


@pytest.fixture(scope="module")
def base(model_dir, tmp_path_factory):
    log = tmp_path_factory.getbasetemp() / "v2-server.log"
    with running_service(model_dir, log, MAX_BATCH_SIZE=str(MAX_BATCH)) as url:
        yield url


@pytest.fixture
def client(base):
    with triton.InferenceServerClient(base.removeprefix("http://")) as c:
        yield c


def native_image(base: str, *files: bytes) -> list[dict]:
    response = httpx.post(f"{base}/predict/image", files=[("file", f) for f in files])
    assert response.status_code == 200, response.text
    body = response.json()
    return body.get("predictions", [body])


def native_iris(base: str, flowers: np.ndarray) -> list[dict]:
    response = httpx.post(f"{base}/predict/iris", json={"instances": flowers.tolist()})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def probabilities(predictions: list[dict]) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in predictions], np.float32)


def image_bytes_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    return tensor.set_data_from_numpy(np.array(files, dtype=object), binary_data=binary)


# --- health and metadata --------------------------------------------------------------------


def test_server_is_live_and_ready_and_speaks_the_binary_extension(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "cifar-serving"
    assert "binary_tensor_data" in metadata["extensions"]


def test_models_are_ready_in_their_live_version_only(client):
    assert client.is_model_ready("cifar10")
    assert client.is_model_ready("cifar10", "1")
    assert not client.is_model_ready("cifar10", "2")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_comes_from_each_export(client):
    cifar = client.get_model_metadata("cifar10")
    assert cifar["platform"] == "tensorflow_savedmodel"
    assert cifar["versions"] == ["1"]
    assert cifar["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]},
        {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
    ]
    assert cifar["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    wide = client.get_model_metadata("wide", "1")  # a 16x24 image model with two classes
    assert wide["inputs"][0]["shape"] == [-1, 16, 24, 3]
    assert wide["outputs"][0]["shape"] == [-1, 2]
    assert client.get_model_metadata("iris")["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 4]}
    ]


def test_metadata_of_a_version_that_is_not_live_names_the_live_one(client):
    with pytest.raises(InferenceServerException, match="version 1 is live"):
        client.get_model_metadata("cifar10", "7")


def test_tritonclient_reads_the_error_of_a_path_the_service_does_not_serve(client):
    # The model configuration is Triton's own extension; tritonclient reads `error` from the 404.
    with pytest.raises(InferenceServerException, match="Not Found") as raised:
        client.get_model_config("cifar10")
    assert "decoding" not in str(raised.value)


# --- inference ------------------------------------------------------------------------------


def test_encoded_images_get_the_answers_of_predict_image(base, client):
    files = [path.read_bytes() for path in SAMPLES]
    expected = native_image(base, *files)
    result = client.infer("cifar10", [image_bytes_input(files)])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities(expected))
    assert [label.decode() for label in result.as_numpy("label")] == [p["label"] for p in expected]
    assert result.get_response()["model_version"] == "1"


def test_encoded_images_in_json_as_base64_get_the_answers_of_predict_image(base):
    # JSON cannot hold raw bytes: base64 strings, declared as such (MLServer's convention).
    files = [path.read_bytes() for path in SAMPLES[:2]]
    image_bytes = tensor("image_bytes", [2], "BYTES", [base64.b64encode(f).decode() for f in files])
    image_bytes["parameters"] = {"content_type": "base64"}
    response = httpx.post(f"{base}/v2/models/cifar10/infer", json={"inputs": [image_bytes]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    expected = native_image(base, *files)
    assert outputs["label"]["data"] == [p["label"] for p in expected]
    assert outputs["probabilities"]["shape"] == [2, 10]
    np.testing.assert_array_equal(
        np.array(outputs["probabilities"]["data"], np.float32).reshape(2, 10), probabilities(expected)
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_raw_pixels_get_the_savedmodels_own_output(client, exports, binary):
    pixels = np.stack([decode_image(path.read_bytes(), (32, 32), 10**8) for path in SAMPLES])
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8").set_data_from_numpy(
        pixels, binary_data=binary
    )
    result = client.infer("cifar10", [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary)])
    signature = tf.saved_model.load(str(exports["cifar10"])).signatures["serving_default"]
    own = signature(image=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose(result.as_numpy("probabilities"), own, rtol=1e-5, atol=1e-7)


def test_pixels_and_encoded_files_agree(client):
    files = [SAMPLES[0].read_bytes()]
    pixels = decode_image(files[0], (32, 32), 10**8)[None]
    raw = client.infer(
        "cifar10", [triton.InferInput("image", [1, 32, 32, 3], "UINT8").set_data_from_numpy(pixels)]
    )
    encoded = client.infer("cifar10", [image_bytes_input(files)])
    np.testing.assert_array_equal(raw.as_numpy("probabilities"), encoded.as_numpy("probabilities"))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_get_the_same_answers(client, algorithm):
    files = [SAMPLES[2].read_bytes()]
    plain = client.infer("cifar10", [image_bytes_input(files)])
    compressed = client.infer(
        "cifar10",
        [image_bytes_input(files)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,  # may be answered uncompressed, as here
    )
    np.testing.assert_array_equal(compressed.as_numpy("probabilities"), plain.as_numpy("probabilities"))


def test_a_compressed_body_that_inflates_past_the_cap_is_refused(base):
    bomb = gzip.compress(bytes(50 * 1024 * 1024))  # 50 MB of zeros in about 50 kB
    response = httpx.post(f"{base}/v2/models/iris/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "once inflated" in response.json()["error"]


def test_only_the_requested_outputs_are_answered(client):
    result = client.infer(
        "cifar10",
        [image_bytes_input([SAMPLES[1].read_bytes()])],
        outputs=[triton.InferRequestedOutput("label", binary_data=False)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (1,)


def test_features_get_the_answers_of_predict_iris(base, client):
    expected = native_iris(base, FLOWERS)
    for binary in (True, False):
        tensor = triton.InferInput("features", list(FLOWERS.shape), "FP32").set_data_from_numpy(
            FLOWERS, binary
        )
        result = client.infer("iris", [tensor], model_version="1", request_id="flowers")
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities(expected))
        assert [x.decode() for x in result.as_numpy("label")] == [p["label"] for p in expected]
        assert result.get_response()["id"] == "flowers"


def test_sixteen_concurrent_async_requests_each_get_their_own_answer(base):
    files = [path.read_bytes() for path in SAMPLES]
    expected = {i: native_image(base, files[i % len(files)])[0] for i in range(len(files))}

    async def run():
        async with triton_aio.InferenceServerClient(base.removeprefix("http://")) as client:
            return await asyncio.gather(
                *(client.infer("cifar10", [image_bytes_input([files[i % len(files)]])]) for i in range(16))
            )

    results = asyncio.run(run())
    for i, result in enumerate(results):
        want = expected[i % len(files)]
        assert result.as_numpy("label")[0].decode() == want["label"]
        np.testing.assert_array_equal(result.as_numpy("probabilities")[0], probabilities([want])[0])


def test_kserve_client_v2_infer_matches_the_native_routes(base):
    files = [path.read_bytes() for path in SAMPLES[:3]]
    expected_images, expected_flowers = native_image(base, *files), native_iris(base, FLOWERS)

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            assert await client.is_server_ready(base)
            assert await client.is_model_ready(base, "cifar10")
            images = InferInput("image_bytes", [len(files)], "BYTES")
            images.set_data_from_numpy(np.array(files, object), binary_data=True)
            flowers = InferInput("features", list(FLOWERS.shape), "FP32", data=FLOWERS.ravel().tolist())
            return (
                await client.infer(base, InferRequest("cifar10", [images]), model_name="cifar10"),
                await client.infer(base, InferRequest("iris", [flowers]), model_name="iris"),
            )
        finally:
            await client.close()

    image_answer, iris_answer = asyncio.run(run())
    outputs = {o.name: o.as_numpy() for o in image_answer.outputs}
    np.testing.assert_array_equal(outputs["probabilities"], probabilities(expected_images))
    assert [x.decode() if isinstance(x, bytes) else x for x in outputs["label"]] == [
        p["label"] for p in expected_images
    ]
    outputs = {o.name: o.as_numpy() for o in iris_answer.outputs}
    np.testing.assert_array_equal(outputs["probabilities"], probabilities(expected_flowers))


def test_v2_requests_are_counted_under_their_protocol(base, client):
    client.infer("iris", [triton.InferInput("features", [1, 4], "FP32").set_data_from_numpy(FLOWERS[:1])])
    metrics = httpx.get(f"{base}/metrics").text
    assert (
        'http_requests_total{method="POST",protocol="v2",route="/v2/models/{model}/infer",status="200"}'
        in metrics
    )


# --- bad input ------------------------------------------------------------------------------


def tensor(name="features", shape=(1, 4), datatype="FP32", data=(1.0, 2.0, 3.0, 4.0), **extra) -> dict:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": list(data), **extra}


BAD_REQUESTS = [
    ("/v2/models/iris/infer", {"inputs": [tensor(name="petals")]}, 422, "unknown input 'petals'"),
    ("/v2/models/iris/infer", {"inputs": [tensor(datatype="FP64")]}, 422, "must be FP32"),
    ("/v2/models/iris/infer", {"inputs": [tensor(shape=(2, 4))]}, 400, "holds 8 elements"),
    ("/v2/models/iris/infer", {"inputs": [tensor(shape=(1, 3), data=(1, 2, 3))]}, 422, "shape [n, 4]"),
    ("/v2/models/iris/infer", {"inputs": [tensor(shape=(17, 4), data=[1.0] * 68)]}, 413, "more than 16"),
    ("/v2/models/iris/infer", {"inputs": [tensor(shape=(0, 4), data=())]}, 422, "no instances"),
    ("/v2/models/iris/infer", {"inputs": [tensor(data=(1, 2, 3, 1e39))]}, 422, "finite"),
    ("/v2/models/iris/infer", {"inputs": [tensor()], "outputs": [{"name": "logits"}]}, 422, "unknown output"),
    ("/v2/models/iris/infer", {"inputs": "features"}, 400, "inputs"),
    ("/v2/models/iris/infer", [1, 2], 400, "object"),
    ("/v2/models/iris/versions/9/infer", {"inputs": [tensor()]}, 404, "version 1 is live"),
    ("/v2/models/tulip/infer", {"inputs": [tensor()]}, 404, "no model named 'tulip'"),
    ("/v2/models/cifar10/infer", {"inputs": [tensor()]}, 422, "takes image or image_bytes"),
    (
        "/v2/models/cifar10/infer",
        {"inputs": [tensor("image", (1, 32, 32, 3), "UINT8", [256] * 3072)]},
        400,
        "within [0, 255]",
    ),
    (
        "/v2/models/cifar10/infer",
        {"inputs": [tensor("image_bytes", (1,), "BYTES", ["not an image"])]},
        415,
        "not an image",
    ),
    (
        "/v2/models/cifar10/infer",
        {
            "inputs": [
                tensor("image", (1, 32, 32, 3), "UINT8", [0] * 3072),
                tensor("image_bytes", (1,), "BYTES", ["x"]),
            ]
        },
        422,
        "takes one input",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_error_in_the_protocols_format(base, path, body, status, message):
    response = httpx.post(base + path, content=json.dumps(body))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "body"),
        (b'{"inputs": []}' + bytes(10), "14", "at least 1"),
        (b"{}", "99", "exceeds"),
        (b"{}", "-1", "Inference-Header-Content-Length"),
        (
            json.dumps({"inputs": [tensor(data=(), parameters={"binary_data_size": 16})]}).encode()
            + bytes(8),
            None,
            "body",
        ),
    ],
)
def test_malformed_binary_bodies_are_refused(base, body, header_length, message):
    headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
    response = httpx.post(f"{base}/v2/models/iris/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_tritonclient_reports_the_servers_error_message(client):
    wrong = triton.InferInput("features", [1, 4], "FP64").set_data_from_numpy(FLOWERS[:1].astype(np.float64))
    with pytest.raises(InferenceServerException, match="must be FP32"):
        client.infer("iris", [wrong])
