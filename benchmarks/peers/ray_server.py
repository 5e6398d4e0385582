"""Ray Serve, as its batching guide writes it: one deployment whose async method carries
`@serve.batch`; the HTTP proxy hands each request to it and the decorator gathers a batch.

Access log off through Serve's LoggingConfig. Run by the harness in the Ray venv.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
from ray import serve
from ray.serve.schema import LoggingConfig
from starlette.requests import Request

from benchmarks.peers.model import Classifier, decode

MAX_BATCH_SIZE = 64  # the most clients the benchmark runs
BATCH_WAIT_S = 0.002  # the service's default MAX_BATCH_WAIT_MS


@serve.deployment(logging_config=LoggingConfig(enable_access_log=False))
class ImageClassifier:
    def __init__(self) -> None:
        self.model = Classifier()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def predict(self, uploads: list[bytes]) -> list[dict]:
        return self.model.answers(np.stack([decode(upload) for upload in uploads]))

    async def __call__(self, request: Request) -> dict:
        form = await request.form()
        return await self.predict(await form["file"].read())


def main() -> None:
    # SIGTERM must unwind through atexit, where Ray stops the daemons it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve.start(
        http_options={"host": "127.0.0.1", "port": int(os.environ["PORT"])},
        logging_config=LoggingConfig(enable_access_log=False),
    )
    serve.run(ImageClassifier.bind(), route_prefix="/predict/image", blocking=True)


if __name__ == "__main__":
    main()
