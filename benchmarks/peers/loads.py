"""One measured cell: `clients` closed-loop clients on one payload for `seconds`, by one of the
load generators (locust and httpx over HTTP; grpc over gRPC, for the servers that speak it),
with the server's CPU and memory and the generator's own CPU measured from outside. Every
generator runs as a subprocess of this one, so its CPU time is read back from RUSAGE_CHILDREN
once it has exited."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import summarize
from benchmarks.server import REPO, cpu_seconds, rss_bytes

GENERATORS = ("locust", "httpx", "grpc")


@dataclass(frozen=True)
class GrpcEndpoint:
    """Where a server answers gRPC (the Open Inference Protocol), and its model's input."""

    target: str  # host:port
    model: str
    input: str
    shape: str  # comma-separated, the batch dimension first where the model has one


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    generator: str,
    url: str,
    pid: int,
    payload_dir: Path,
    clients: int,
    seconds: float,
    prefix: Path,
    processes: int = 2,
    grpc: GrpcEndpoint | None = None,
) -> dict:
    """Drive the server at `url` (process `pid` and its children) and return the cell's figures."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    server_before, client_before = cpu_seconds(pid), children_cpu_s()
    started = time.monotonic()
    if generator == "locust":
        counts = _locust(url, payload_dir, clients, seconds, prefix, processes)
    elif generator == "grpc":
        if grpc is None:
            raise ValueError("the grpc generator needs the server's gRPC endpoint")
        command = ["benchmarks.peers.grpc_load", grpc.target, grpc.model, grpc.input, grpc.shape]
        counts = _asyncio_client([*command, str(payload_dir)], clients, seconds, prefix)
    else:
        counts = _asyncio_client(
            ["benchmarks.peers.httpx_load", url, str(payload_dir)], clients, seconds, prefix
        )
    wall_s = time.monotonic() - started
    server_cpu_s = cpu_seconds(pid) - server_before
    return {
        "generator": generator,
        "clients": clients,
        **counts,
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_s_per_1000": cpu_per_1000(server_cpu_s, counts["requests"] + counts["errors"]),
        "client_cpu_percent": round(100 * (children_cpu_s() - client_before) / wall_s),
        "server_rss_mb": round(rss_bytes(pid) / 2**20),
        "wall_s": round(wall_s, 1),
    }


def cpu_per_1000(cpu_s: float, requests: int) -> float:
    """CPU-seconds the server spent per 1,000 requests it answered; NaN when it answered none."""
    return round(1000 * cpu_s / requests, 2) if requests else math.nan


def _locust(url: str, payload_dir: Path, users: int, seconds: float, prefix: Path, processes: int) -> dict:
    command = [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locust_users.py"))]
    command += ["--headless", "--host", url, "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s"]
    command += ["--json-file", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    if processes > 1:  # locust forks workers that share the users: one core is not the ceiling
        command += ["--processes", str(min(processes, users))]
    env = {**os.environ, "PEERS_PAYLOAD_DIR": str(payload_dir), "PYTHONPATH": str(REPO)}
    with open(f"{prefix}.log", "wb") as log:
        subprocess.run(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=seconds + 120
        )
    if not Path(f"{prefix}.json").exists():
        raise RuntimeError(f"locust wrote no statistics; see {prefix}.log")
    stats = summarize(*json.loads(Path(f"{prefix}.json").read_text()))
    return {
        "requests": stats.requests - stats.failures,
        "errors": stats.failures,
        "requests_per_s": round(stats.requests_per_s * (1 - stats.failures / max(stats.requests, 1)), 1),
        "p50_ms": stats.p50_ms,
        "p99_ms": stats.p99_ms,
    }


def _asyncio_client(module_and_args: list[str], clients: int, seconds: float, prefix: Path) -> dict:
    """Run one of the asyncio generators (httpx_load, grpc_load), which print the same JSON."""
    command = [sys.executable, "-m", *module_and_args, str(clients), f"{seconds:g}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120)
    Path(f"{prefix}.log").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{module_and_args[0]} failed ({done.returncode}); see {prefix}.log")
    result = json.loads(done.stdout)
    latencies = sorted(result["latencies_ms"])
    Path(f"{prefix}.errors.json").write_text(json.dumps(result["errors"][:100], indent=1))
    return {
        "requests": len(latencies),
        "errors": len(result["errors"]),
        "requests_per_s": round(len(latencies) / result["elapsed_s"], 1),
        "p50_ms": round(nearest_rank(latencies, 0.50), 1),
        "p99_ms": round(nearest_rank(latencies, 0.99), 1),
    }


def nearest_rank(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values; NaN when empty."""
    if not ordered:
        return math.nan
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]
