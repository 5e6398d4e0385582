"""The gRPC client: `concurrency` asyncio tasks, each a tritonclient.grpc.aio client of its own
(one channel, one HTTP/2 connection, as separate users would have), sending the payload's JPEGs
in turn as one BYTES tensor for `seconds`; prints JSON with every latency and each error, as
benchmarks.peers.httpx_load does. The same requests for every server, but for the names each
one gives its model's input (the service: `image_bytes`, shape [1]; Triton's model through
PyTriton: `upload`, [1, 1], its batch dimension first).

    python -m benchmarks.peers.grpc_load HOST:PORT MODEL INPUT SHAPE PAYLOAD_DIR CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from benchmarks.peers.closed_loop import closed_loop

OUTPUT = "probabilities"
# tritonclient's own channel options, and a subchannel pool per channel: gRPC otherwise shares
# one connection among all the channels a process opens to one address, so every simulated
# client would ride one HTTP/2 connection (to one of the service's workers), which separate
# users never do (measured: 360 against 507 req/s, 32 px, 64 clients).
KEEPALIVE = triton.KeepAliveOptions()
CHANNEL = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", KEEPALIVE.http2_max_pings_without_data),
]


def inputs(name: str, shape: list[int], files: list[bytes]) -> list[list[triton.InferInput]]:
    """Each file as the request's one input, built once, before the clock."""
    built = []
    for content in files:
        tensor = triton.InferInput(name, shape, "BYTES")
        tensor.set_data_from_numpy(np.array([content], object).reshape(shape))
        built.append([tensor])
    return built


async def drive(target: str, model: str, requests: list, concurrency: int, seconds: float) -> dict:
    clients = [triton.InferenceServerClient(target, channel_args=CHANNEL) for _ in range(concurrency)]
    outputs = [triton.InferRequestedOutput(OUTPUT)]

    async def infer(client: triton.InferenceServerClient, request: list) -> str | None:
        try:
            result = await client.infer(model, request, outputs=outputs, client_timeout=60)
        except InferenceServerException as failure:
            return f"{failure.status()}: {failure.message()[:120]}"
        probabilities = result.as_numpy(OUTPUT)
        return None if probabilities is not None and probabilities.size else "no probabilities in the answer"

    return await closed_loop(clients, requests, infer, seconds)


def main() -> None:
    target, model, name, shape, folder, concurrency, seconds = sys.argv[1:8]
    files = [path.read_bytes() for path in sorted(Path(folder).glob("*.jpg"))]
    requests = inputs(name, [int(d) for d in shape.split(",")], files)
    print(json.dumps(asyncio.run(drive(target, model, requests, int(concurrency), float(seconds)))))


if __name__ == "__main__":
    main()
