"""BentoML, as its adaptive-batching guide writes it: a `@bentoml.service` whose API is
`batchable=True` with `max_batch_size`; the dispatcher sizes each batch from recent latency.

The upload arrives as the multipart `file` part (a `Path` input). A batchable API's HTTP
interface is batch in, batch out, so each request is a batch of one and its answer a list of one
prediction; the dispatcher merges concurrent requests. Access log off in the service config.
Served by the harness with `bentoml serve benchmarks.peers.bentoml_server:Classifier`.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np

from benchmarks.peers import model

MAX_BATCH_SIZE = 64  # the most clients the benchmark runs


@bentoml.service(logging={"access": {"enabled": False}})
class Classifier:
    def __init__(self) -> None:
        self.model = model.Classifier()

    @bentoml.api(route="/predict/image", batchable=True, max_batch_size=MAX_BATCH_SIZE)
    def predict(self, file: list[Path]) -> list[dict]:
        return self.model.answers(np.stack([model.decode(path.read_bytes()) for path in file]))
