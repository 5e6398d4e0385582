"""One gRPC client channel, many callers: does every worker get a share of the work?

    python -m benchmarks.grpc_spread                  # ~2 min: ages 0 (connections kept), default, 0
    python -m benchmarks.grpc_spread --ages 0.5 --seconds 30

For each GRPC_MAX_CONNECTION_AGE_S in `--ages` (the default: the setting's default, unset)
starts `python -m service` on models/ with its default workers, then 32 threads call
ModelInfer (one CIFAR-10 image, raw) without pause over ONE channel for `--seconds`, and prints
each worker's CPU seconds (psutil, per worker pid) and its share of the workers' total, with the
calls answered per second. SO_REUSEPORT spreads connections over the workers, not calls: with
connections kept forever one channel's calls all reach one worker. Ages run A-B-A so that a
change in the shared machine's load shows as a difference between the two A runs.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil

from benchmarks.server import REPO, serve
from service.protocols.third_party import open_inference_pb2 as oip

INFER = "/inference.GRPCInferenceService/ModelInfer"
DEFAULT = "default"


def image_request() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="cifar10")
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    request.inputs.add(name="image", datatype="UINT8", shape=image.shape)
    request.raw_input_contents.append(image.tobytes())
    return request


def workers_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each worker process of the server `pid` (its children
    but multiprocessing's resource tracker)."""
    children = psutil.Process(pid).children()
    workers = [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]
    return {worker.pid: sum(worker.cpu_times()[:2]) for worker in workers}


def run(age: str, callers: int, seconds: float, log: Path) -> dict:
    settings = {"POLL_INTERVAL_S": "0", "ACCESS_LOG": "false"}
    if age != DEFAULT:
        settings["GRPC_MAX_CONNECTION_AGE_S"] = age
    with serve("service", REPO / "models", log, settings=settings) as server:
        request = image_request()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            infer = channel.unary_unary(
                INFER,
                request_serializer=oip.ModelInferRequest.SerializeToString,
                response_deserializer=oip.ModelInferResponse.FromString,
            )
            infer(request, timeout=30)  # connected and warm
            answered, failed = [0] * callers, [0] * callers
            stop = threading.Event()

            def caller(index: int) -> None:
                while not stop.is_set():
                    try:
                        infer(request, timeout=30)
                        answered[index] += 1
                    except grpc.RpcError:
                        failed[index] += 1

            before = workers_cpu(server.pid)
            threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            after = workers_cpu(server.pid)
            elapsed = time.monotonic() - started
            stop.set()
            for thread in threads:
                thread.join()
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    total = sum(used.values()) or 1.0
    return {
        "age": age,
        "cpu_s": used,
        "shares": {pid: cpu / total for pid, cpu in used.items()},
        "calls_per_s": sum(answered) / elapsed,
        "failed": sum(failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ages", default=f"0,{DEFAULT},0", help="GRPC_MAX_CONNECTION_AGE_S values, in order")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    print(f"one channel, {args.callers} callers, {args.seconds:.0f} s each; CPU of each worker (psutil)")
    for age in args.ages.split(","):
        result = run(age, args.callers, args.seconds, Path(tempfile.gettempdir()) / "grpc_spread.log")
        shares = ", ".join(
            f"pid {pid}: {result['cpu_s'][pid]:.1f} CPU-s ({share:.0%})"
            for pid, share in sorted(result["shares"].items())
        )
        print(
            f"GRPC_MAX_CONNECTION_AGE_S={age}: {shares}; lowest share {min(result['shares'].values()):.0%};"
            f" {result['calls_per_s']:.0f} calls/s, {result['failed']} failed",
            flush=True,
        )


if __name__ == "__main__":
    main()
