"""How a server uses the machine's cores, when its settings leave it open: server processes
(`WORKERS`) and TensorFlow's thread pools (`INTRA_OP_THREADS`, `INTER_OP_THREADS`).

On CPUs: one worker per core the process may use, each running its models on one thread of
its own. A worker's event loop is one Python thread (the GIL), busy reading, decoding and
answering requests; a model thread per worker beside it keeps both busy without the pools of
several workers spinning against each other and against the decoders. Measured on this 2-core
machine with locust (FastHttpUser, 2 processes, 8 s per cell, `benchmarks.peers.loads`,
2026-12-02, one run each), requests/s at 8 clients (32 px / 640x480 JPEG) and 64 (640x480):

    1 worker, TensorFlow's own pools (2 + 2 threads)   364 / 252 / 358
    1 worker, 1 + 1 threads                            329 / 300 / 383
    2 workers, 1 + 1 threads each                      423 / 336 / 464

"The cores the process may use" counts its CPU affinity and a container's CPU quota (cgroups),
which TensorFlow and `os.cpu_count()` do not: a container limited to 2 CPUs on a 64-core host
gets 2 workers, not 64. With a GPU (DEVICE=gpu, or auto on a host with NVIDIA's driver) the
GPU does the model's work: one worker, and TensorFlow chooses its own pools.
"""

from __future__ import annotations

from dataclasses import dataclass

from joblib import cpu_count

from service.device import nvidia_driver_present


@dataclass(frozen=True)
class Layout:
    workers: int
    intra_op_threads: int  # 0: TensorFlow chooses (one per core)
    inter_op_threads: int


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by a cgroup CPU quota, at least 1."""
    return max(1, cpu_count(only_physical_cores=False))


def layout_for(device: str) -> Layout:
    """The layout for DEVICE=`device` (auto, cpu or gpu) on this machine."""
    if device == "gpu" or (device == "auto" and nvidia_driver_present()):
        return Layout(workers=1, intra_op_threads=0, inter_op_threads=0)
    return Layout(workers=usable_cores(), intra_op_threads=1, inter_op_threads=1)
