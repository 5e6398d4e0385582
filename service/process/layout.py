"""How a server uses the machine's cores, when its settings leave it open: server processes
(`WORKERS`) and TensorFlow's thread pools (`INTRA_OP_THREADS`, `INTER_OP_THREADS`).

On CPUs: one worker per core the process may use, each running its models on one thread of
its own. A worker's event loop is one Python thread (the GIL), busy reading, decoding and
answering requests; a model thread per worker beside it keeps both busy without the pools of
several workers spinning against each other and against the decoders (measured: "The worker
layout" in docs/operating/autoscaling.md).

"The cores the process may use" counts its CPU affinity and a container's CPU quota (cgroups),
which TensorFlow and `os.cpu_count()` do not: a container limited to 2 CPUs on a 64-core host
gets 2 workers, not 64. With a GPU (DEVICE=gpu, or auto on a host with NVIDIA's driver) the
GPU does the model's work: one worker, and TensorFlow chooses its own pools.

Each worker holds its own TensorFlow and models (about 1 GB resident with the shipped models),
so workers are also limited to as many as fit the memory limit (cgroup) at WORKER_MEMORY_BYTES
each, and to MAX_UNLIMITED_WORKERS where no limit is set: a 32-core host without limits runs 8,
not 32 workers of ~1 GB (more cores than that are better used by more replicas).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from joblib import cpu_count

from service.process.device import nvidia_driver_present

# Set by `python -m service` for its workers: how their number was chosen (service/process/worker.py).
WORKERS_WHY = "WORKERS_WHY"
WORKER_MEMORY_BYTES = 2**30  # a worker's resident size, and room for its batches
MAX_UNLIMITED_WORKERS = 8
# cgroup v2, then v1: the memory this container (or process group) may use.
MEMORY_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@dataclass(frozen=True)
class Layout:
    workers: int
    intra_op_threads: int  # 0: TensorFlow chooses (one per core)
    inter_op_threads: int
    why: str  # how the worker count was chosen, for the ready line


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by a cgroup CPU quota, at least 1."""
    return max(1, cpu_count(only_physical_cores=False))


def memory_limit(files: tuple[Path, ...] = MEMORY_LIMIT_FILES) -> int | None:
    """Bytes this process's cgroup may use, or None without a limit (cgroup v1 writes a number
    near 2**63 for none)."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        return None if text == "max" or int(text) >= 2**60 else int(text)
    return None


def worker_count(cores: int, memory: int | None) -> tuple[int, str]:
    """Workers for `cores` usable cores and `memory` bytes of limit (None: no limit), and why."""
    if memory is None:
        workers = min(cores, MAX_UNLIMITED_WORKERS)
        capped = f", at most {MAX_UNLIMITED_WORKERS} without a memory limit" if workers < cores else ""
        return workers, f"{cores} usable cores{capped}"
    fit = max(1, memory // WORKER_MEMORY_BYTES)
    gib = f"{memory / 2**30:.1f} GiB"
    return min(cores, fit), f"{cores} usable cores, {fit} fit in the {gib} memory limit at 1 GiB each"


def layout_for(device: str) -> Layout:
    """The layout for DEVICE=`device` (auto, cpu or gpu) on this machine."""
    if device == "gpu" or (device == "auto" and nvidia_driver_present()):
        return Layout(workers=1, intra_op_threads=0, inter_op_threads=0, why="one per GPU")
    workers, why = worker_count(usable_cores(), memory_limit())
    return Layout(workers=workers, intra_op_threads=1, inter_op_threads=1, why=why)
