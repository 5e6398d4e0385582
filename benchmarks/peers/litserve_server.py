"""LitServe, as its batching docs write it: a LitAPI whose `predict` takes the batch, with
`max_batch_size` and `batch_timeout`, one inference worker (its default), access log off.

`decode_request` runs in the inference worker on each request's form, so the upload is decoded
there; `batch` stacks the decoded images. Run by the harness in the LitServe venv.
"""

from __future__ import annotations

import os

import litserve as ls
import numpy as np

from benchmarks.peers.model import Classifier, decode

MAX_BATCH_SIZE = 64  # the most clients the benchmark runs
BATCH_TIMEOUT_S = 0.002  # the service's default MAX_BATCH_WAIT_MS


class ImageAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Classifier()

    def decode_request(self, request) -> np.ndarray:
        return decode(request["file"].file.read())

    def batch(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack(images)

    def predict(self, images: np.ndarray) -> list[dict]:
        return self.model.answers(images)

    def unbatch(self, answers: list[dict]) -> list[dict]:
        return answers

    def encode_response(self, answer: dict) -> dict:
        return answer


if __name__ == "__main__":
    api = ImageAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/predict/image")
    ls.LitServer(api, accelerator="cpu").run(
        host="127.0.0.1", port=int(os.environ["PORT"]), generate_client_file=False, access_log=False
    )
