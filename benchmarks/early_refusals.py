"""Requests refused before their bodies are decoded, measured from outside: how long the refusal
takes, and the slowest /healthz answer of the same worker meanwhile.

    python -m benchmarks.early_refusals          # ~2 min, one worker (the stall would be its own)

Starts `python -m service` on models/ with API_KEY set and WORKERS=1 (so /healthz shares the
worker with the hostile call: with two, a fresh connection may reach the other one), then, each
while /healthz is asked every 10 ms on a connection of its own:
- ModelInfer (raw) of 2.6 M empty BYTES elements (10.4 MB), declared as 2.6 M rows;
- the same elements declared as 1 (the walk stops past the declared count);
- the same as typed `bytes_contents` (protobuf parses the message before anything can check it);
- a 65-dimension shape;
- POST /predict/iris with a 10 MiB JSON body and a wrong key, and with one flower (the time a
  refusal takes without the upload).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from benchmarks.server import REPO, serve
from service.protocols.third_party import open_inference_pb2 as oip

INFER = "/inference.GRPCInferenceService/ModelInfer"
KEY = "benchmark-key"
ELEMENTS = 2_600_000


class Healthz:
    """/healthz every 10 ms on its own keep-alive connection; the slowest answer in a window."""

    def __init__(self, url: str):
        self.url = url
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                client.get(f"{self.url}/healthz")
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    def slowest_during(self, action: Callable[[], str]) -> tuple[str, float, float]:
        """(action's outcome, its seconds, the slowest /healthz while it ran and just after)."""
        time.sleep(0.2)
        first = len(self.latencies)
        started = time.perf_counter()
        outcome = action()
        took = time.perf_counter() - started
        time.sleep(0.2)  # a /healthz held during the action answers after it
        return outcome, took, max(self.latencies[first:])


def model_infer(target: str, request: oip.ModelInferRequest) -> Callable[[], str]:
    def call() -> str:
        with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            rpc = channel.unary_unary(
                INFER,
                request_serializer=oip.ModelInferRequest.SerializeToString,
                response_deserializer=oip.ModelInferResponse.FromString,
            )
            try:
                rpc(request, metadata=(("x-api-key", KEY),), timeout=60)
            except grpc.RpcError as error:
                return f"{error.code().name}: {error.details()[:70]}"
            return "OK"

    return call


def claim(shape: list[int], raw: bytes | None = None, typed: int = 0) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="cifar10")
    tensor = request.inputs.add(name="image_bytes", datatype="BYTES", shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    tensor.contents.bytes_contents.extend([b""] * typed)
    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each request (medians printed)")
    repeat = parser.parse_args().repeat
    settings = {"POLL_INTERVAL_S": "0", "ACCESS_LOG": "false", "WORKERS": "1", "API_KEY": KEY}
    empty = b"\0\0\0\0" * ELEMENTS
    sixty_five = oip.ModelInferRequest(model_name="iris")
    sixty_five.inputs.add(name="features", datatype="FP32", shape=[1] * 65)
    sixty_five.raw_input_contents.append(b"\0" * 4)
    log = Path(tempfile.gettempdir()) / "early_refusals.log"
    with serve("service", REPO / "models", log, settings=settings) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        body = b'{"instances": [' + b"[5.1, 3.5, 1.4, 0.2], " * (10 * 1024 * 1024 // 22) + b"[1, 2, 3, 4]]}"
        body = body[: 10 * 1024 * 1024 - 2] + b"]}"  # exactly 10 MiB (not valid JSON past the cut)

        client = httpx.Client(timeout=60)  # made once: a new client's set-up alone takes ~100 ms

        def wrong_key(content: bytes) -> Callable[[], str]:
            def post() -> str:
                headers = {"X-API-Key": "wrong", "Content-Type": "application/json"}
                response = client.post(f"{server.url}/predict/iris", content=content, headers=headers)
                return f"{response.status_code}: {response.text.strip()[:70]}"

            return post

        cases = {
            f"ModelInfer raw, {ELEMENTS:,} empty BYTES declared as [{ELEMENTS}]": model_infer(
                target, claim([ELEMENTS], empty)
            ),
            f"ModelInfer raw, {ELEMENTS:,} empty BYTES declared as [1]": model_infer(
                target, claim([1], empty)
            ),
            f"ModelInfer typed, {ELEMENTS:,} empty bytes_contents declared as [{ELEMENTS}]": model_infer(
                target, claim([ELEMENTS], typed=ELEMENTS)
            ),
            "ModelInfer, 65 dimensions": model_infer(target, sixty_five),
            "POST /predict/iris, 10 MiB JSON, wrong key": wrong_key(body),
            "POST /predict/iris, one flower, wrong key (for comparison)": wrong_key(
                b'{"features": [1, 2, 3, 4]}'
            ),
        }
        probe = Healthz(server.url)
        probe.thread.start()
        for name, action in cases.items():
            runs = [probe.slowest_during(action) for _ in range(repeat)]
            outcome = runs[-1][0]
            took = statistics.median(run[1] for run in runs)
            slowest = statistics.median(run[2] for run in runs)
            meanwhile = f"slowest /healthz meanwhile {slowest * 1000:.0f} ms (median of {repeat})"
            print(f"{name}: {outcome} in {took * 1000:.0f} ms; {meanwhile}", flush=True)
        probe.stop.set()
        client.close()


if __name__ == "__main__":
    main()
