"""Load test for the prediction service: one task per endpoint, payloads built once at import.

Headless, both endpoints, 32 users for 60 s against a running service:

    locust -f locustfile.py --headless -u 32 -r 32 -t 60s --host http://127.0.0.1:8000

Web UI (open http://127.0.0.1:8089):

    locust -f locustfile.py --host http://127.0.0.1:8000

IMAGE_FILES=<folder> makes the image tasks send the files of that folder instead (e.g. held-out
photos as 32 px PNGs: `python -m benchmarks.fastpath load`).

One endpoint at a time: `--tags image`, `--tags iris`, or `--tags v2` (the same images through
Open Inference Protocol v2 `infer` as `image_bytes`, with the binary tensor data extension, as
tritonclient sends them). When the service requires a key, export
it as API_KEY, as for the service. The run exits with code 1 when any request failed, including
a 200 whose body is not a prediction.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import uuid
from pathlib import Path

import numpy as np
from locust import FastHttpUser, constant, events, tag, task
from PIL import Image

# Each payload must survive the service's full decode path: PNG and JPEG, tiny and large,
# grayscale and with an alpha channel, since clients will send all of these.
IMAGE_SHAPES = [  # (width, height, Pillow mode, format)
    (32, 32, "RGB", "PNG"),
    (32, 32, "RGB", "JPEG"),
    (64, 48, "RGBA", "PNG"),
    (96, 96, "L", "PNG"),
    (224, 224, "RGB", "JPEG"),
    (640, 480, "RGB", "JPEG"),
]

# Real flowers (the first of each species in Fisher's data), measurements in cm.
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]


def synthetic_image(width: int, height: int, mode: str, fmt: str, rng: np.random.Generator) -> bytes:
    """A smooth colour gradient with noise: compresses like a photo, unlike pure noise."""
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(gradient + rng.normal(0, 25, gradient.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file; FastHttpUser has no `files=` argument."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def image_requests(seed: int = 0) -> list[tuple[bytes, str]]:
    if folder := os.environ.get("IMAGE_FILES"):
        files = sorted(Path(folder).iterdir())
        return [multipart("file", f.name, f.read_bytes(), "application/octet-stream") for f in files]
    rng = np.random.default_rng(seed)
    requests = []
    for width, height, mode, fmt in IMAGE_SHAPES:
        content = synthetic_image(width, height, mode, fmt, rng)
        suffix = "png" if fmt == "PNG" else "jpg"
        requests.append(multipart("file", f"{width}x{height}.{suffix}", content, f"image/{fmt.lower()}"))
    return requests


def iris_requests() -> list[dict]:
    singles = [{"features": flower} for flower in FLOWERS]
    return singles + [{"instances": FLOWERS}, {"instances": FLOWERS * 8}]


def v2_image_requests(seed: int = 0) -> list[tuple[bytes, dict]]:
    """The same images as v2 `infer` bodies: a JSON header, then the file as one BYTES element
    (4-byte little-endian length, then its bytes); every output comes back binary."""
    rng = np.random.default_rng(seed)
    requests = []
    for width, height, mode, fmt in IMAGE_SHAPES:
        content = synthetic_image(width, height, mode, fmt, rng)
        tensor = {"name": "image_bytes", "shape": [1], "datatype": "BYTES"}
        tensor["parameters"] = {"binary_data_size": 4 + len(content)}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        body = header + struct.pack("<I", len(content)) + content
        requests.append((body, {"Inference-Header-Content-Length": str(len(header))}))
    return requests


IMAGE_REQUESTS = image_requests()
IRIS_REQUESTS = iris_requests()
V2_IMAGE_REQUESTS = v2_image_requests()
V2_IMAGE_MODEL = os.environ.get("V2_IMAGE_MODEL", "cifar10")


class ServiceUser(FastHttpUser):
    # No think time: each user is a closed loop, so N users means N requests in flight.
    wait_time = constant(0)
    # Each user waits for its answer as long as locust's own network timeout, and says so
    # (service/deadlines.py). Without it the service's REQUEST_TIMEOUT_S applies, and a closed
    # loop of users that saturates the service is refused as clients who give up in a second are.
    default_headers = {
        "Request-Timeout": str(FastHttpUser.network_timeout),
        **({"X-API-Key": os.environ["API_KEY"]} if os.environ.get("API_KEY") else {}),
    }

    @tag("image")
    @task
    def predict_image(self) -> None:
        body, content_type = random.choice(IMAGE_REQUESTS)
        with self.client.post(
            "/predict/image", data=body, headers={"Content-Type": content_type}, catch_response=True
        ) as response:
            check_predictions(response)

    @tag("iris")
    @task
    def predict_iris(self) -> None:
        payload = random.choice(IRIS_REQUESTS)
        with self.client.post("/predict/iris", json=payload, catch_response=True) as response:
            check_predictions(response, len(payload["instances"]) if "instances" in payload else None)

    @tag("v2")
    @task
    def v2_infer_image_bytes(self) -> None:
        body, headers = random.choice(V2_IMAGE_REQUESTS)
        with self.client.post(
            f"/v2/models/{V2_IMAGE_MODEL}/infer",
            data=body,
            headers=headers,
            name="/v2/models/[model]/infer image_bytes",
            catch_response=True,
        ) as response:
            check_v2_outputs(response)


def check_v2_outputs(response) -> None:
    """A 200 counts only with the probabilities and the label of the one image, as binary
    tensors (a model with an out-of-distribution score answers two more outputs)."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {(response.text or response.error or '')[:200]}")
        return
    try:
        length = int(response.headers["Inference-Header-Content-Length"])
        outputs = json.loads(response.content[:length])["outputs"]
        rows = {o["name"]: o["shape"][0] for o in outputs}
        answered = rows.get("probabilities") == rows.get("label") == 1 and set(rows.values()) == {1}
    except (ValueError, KeyError, TypeError, IndexError):
        answered = False
    if not answered:
        response.failure(f"not a v2 answer for one image: {response.content[:200]!r}")


def check_predictions(response, instances: int | None = None) -> None:
    """A 200 counts only if it answers what was asked: one prediction, or when `instances`
    were sent, `{"predictions": [...]}` with one for each. An error page must not pass."""
    if response.status_code == 0:  # no HTTP answer at all: refused, reset, timed out
        response.failure(response.error)
        return
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return
    try:
        body = response.json()
        predictions = [body] if instances is None else body["predictions"]
        answered = len(predictions) == (instances or 1) and all("label" in p for p in predictions)
    except (ValueError, KeyError, TypeError):
        answered = False
    if not answered:
        response.failure(f"not {instances or 1} prediction(s): {response.text[:200]}")


@events.quitting.add_listener
def fail_on_errors(environment, **_kwargs) -> None:
    """Exit code 1 when any request failed, so CI and the benchmark can trust the exit code."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
