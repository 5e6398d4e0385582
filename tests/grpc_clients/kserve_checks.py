"""KServe's InferenceGRPCClient unchanged against the service: health, and inference with its
raw tensors (binary_data) and its typed contents, answers equal to the export's. Run by
tests/test_protocol_grpc.py in a process of its own."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from export import TARGET, TOLERANCE, best_labels, export_outputs, flowers, photos, pixels, version
from kserve import InferenceGRPCClient, InferInput, InferRequest


def ask(call):
    async def run():
        async with InferenceGRPCClient(TARGET, retries=0) as client:
            return await call(client)

    return asyncio.run(run())


def request(model: str, name: str, array: np.ndarray, datatype: str, binary: bool) -> InferRequest:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="r-1")


def outputs(response) -> dict[str, np.ndarray]:
    return {output.name: output.as_numpy() for output in response.outputs}


def test_server_and_models_are_live_and_ready():
    async def health(client):
        return (
            await client.is_server_live(),
            await client.is_server_ready(),
            await client.is_model_ready("cifar10"),
            await client.is_model_ready("no-such-model"),
        )

    assert ask(health) == (True, True, True, False)


@pytest.mark.parametrize("binary", [True, False], ids=["raw", "typed"])
def test_flowers_get_the_exports_answers(binary):
    rows = flowers()[::10]
    response = ask(lambda client: client.infer(request("iris", "features", rows, "FP32", binary)))
    expected = export_outputs("iris", rows)
    answered = outputs(response)
    np.testing.assert_allclose(answered["probabilities"], expected, atol=TOLERANCE)
    assert [x.decode() if isinstance(x, bytes) else x for x in answered["label"]] == best_labels(
        "iris", expected
    )
    assert response.model_name == "iris" and response.model_version == version("iris")
    assert response.id == "r-1"


@pytest.mark.parametrize("binary", [True, False], ids=["raw", "typed"])
def test_raw_pixels_get_the_exports_answers(binary):
    rows = pixels(photos())
    response = ask(lambda client: client.infer(request("cifar10", "image", rows, "UINT8", binary)))
    np.testing.assert_allclose(
        outputs(response)["probabilities"], export_outputs("cifar10", rows), atol=TOLERANCE
    )


def test_encoded_photos_get_the_exports_answers():
    files = photos()
    response = ask(
        lambda client: client.infer(request("cifar10", "image_bytes", np.array(files, object), "BYTES", True))
    )
    np.testing.assert_allclose(
        outputs(response)["probabilities"], export_outputs("cifar10", pixels(files)), atol=TOLERANCE
    )


def test_an_unknown_model_is_not_found_and_bad_input_an_invalid_argument():
    rows = flowers()[:1]
    with pytest.raises(grpc.RpcError) as unknown:
        ask(lambda client: client.infer(request("no-such-model", "features", rows, "FP32", True)))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as unfit:
        ask(lambda client: client.infer(request("iris", "features", rows[:, :2].copy(), "FP32", True)))
    assert unfit.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must have shape" in unfit.value.details()
