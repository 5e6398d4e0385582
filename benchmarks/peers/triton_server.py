"""NVIDIA Triton through PyTriton, with its dynamic batcher, behind a thin HTTP front.

Triton speaks its own protocols (KServe v2 over HTTP and gRPC), not multipart uploads, so, as
PyTriton users put a REST API in front of it, a small Starlette app takes the service's request
and forwards the upload's raw bytes as a BYTES input with PyTriton's own asyncio client. The
bytes, not pixels, cross to Triton so that decoding happens in the model callable, batched by
Triton like the model call, rather than in the front's single event loop. Run by the harness
in the PyTriton venv (system Python 3.11, numpy < 2).
"""

from __future__ import annotations

import contextlib
import os
import socket

import numpy as np
import uvicorn
from pytriton.client import AsyncioModelClient
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.peers.model import Classifier, decode

MAX_BATCH_SIZE = 64  # the most clients the benchmark runs
QUEUE_DELAY_US = 2000  # the service's default MAX_BATCH_WAIT_MS
classifier = Classifier()


@batch
def infer(upload: np.ndarray) -> dict[str, np.ndarray]:
    """[N, 1] encoded images → [N, classes] probabilities."""
    return {"probabilities": classifier.probabilities(np.stack([decode(row[0]) for row in upload]))}


def front(triton_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async with AsyncioModelClient(triton_url, "cifar10", inference_timeout_s=60) as client:
            app.state.client = client
            yield

    async def predict(request: Request) -> JSONResponse:
        form = await request.form()
        upload = np.array([await form["file"].read()], dtype=object)
        result = await request.app.state.client.infer_sample(upload=upload)
        return JSONResponse(classifier.answer(result["probabilities"]))

    return Starlette(routes=[Route("/predict/image", predict, methods=["POST"])], lifespan=lifespan)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    http_port = free_port()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=int(os.environ.get("TRITON_GRPC_PORT") or free_port()),  # the grpc generator's
        metrics_port=free_port(),
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="cifar10",
            infer_func=infer,
            inputs=[Tensor(name="upload", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US),
            ),
        )
        triton.run()
        uvicorn.run(
            front(f"http://127.0.0.1:{http_port}"),
            host="127.0.0.1",
            port=int(os.environ["PORT"]),
            access_log=False,
            log_level="warning",
        )


if __name__ == "__main__":
    main()
