"""Start one server (the service or a peer) on a free port, wait for a real prediction, stop it.

Each peer runs from its own venv with the repository on PYTHONPATH (for `benchmarks.peers.model`
and the service's decode). Readiness is a 200 carrying a prediction for a real photo: some peers
answer their health route before the model is loaded. Output goes to a log file, never a pipe.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.peers.httpx_load import is_prediction
from benchmarks.peers.install import PEERS, venv_python
from benchmarks.peers.loads import GrpcEndpoint
from benchmarks.server import REPO, free_port, process_tree
from benchmarks.server import stop as stop_process

SERVERS = ("service", *PEERS)
SERVICE = "this service (defaults)"  # its label in reports
FAST_RUNTIME = "tflite-int8"  # what litserve-int8 serves: the export's CPU fast form


@dataclass(frozen=True)
class Started:
    name: str
    label: str  # with its version
    url: str
    pid: int
    startup_s: float  # from launch to the first correct prediction
    grpc: GrpcEndpoint | None  # where it answers gRPC, for the servers that do


def grpc_endpoint(name: str, port: int) -> GrpcEndpoint | None:
    """The same model over gRPC: the service's OIP v2 port, or Triton's own (PyTriton's model
    takes the upload as `upload`, with its batch dimension); None for the others."""
    if name == "service":
        return GrpcEndpoint(f"127.0.0.1:{port}", "cifar10", "image_bytes", "1")
    if name == "triton":
        return GrpcEndpoint(f"127.0.0.1:{port}", "cifar10", "upload", "1,1")
    return None


def launch(
    name: str, version_dir: Path, port: int, decode: str = "service", grpc_port: int = 0
) -> tuple[list[str], dict[str, str], str]:
    """Command, extra environment and label of server `name`. Access logs are off everywhere."""
    if name == "service":
        env = {"MODEL_DIR": str(version_dir.parent.parent), "HOST": "127.0.0.1", "PORT": str(port)}
        env["GRPC_PORT"] = str(grpc_port)
        return [sys.executable, "-m", "service"], {**env, "ACCESS_LOG": "false"}, SERVICE
    peer = PEERS[name]
    python = str(venv_python(peer))
    env = {
        "PYTHONPATH": str(REPO),
        "MODEL_VERSION_DIR": str(version_dir),
        "PORT": str(port),
        "PEERS_DECODE": decode,
        "TRITON_GRPC_PORT": str(grpc_port),
        "RAY_USAGE_STATS_ENABLED": "0",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    if name == "bentoml":
        command = [python, "-m", "bentoml", "serve", "benchmarks.peers.bentoml_server:Classifier"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
    elif name == "litserve-int8":
        command = [python, "-m", "benchmarks.peers.litserve_server"]
        env["PEERS_RUNTIME"] = FAST_RUNTIME
        return command, env, f"{peer.label} ({FAST_RUNTIME})"
    else:
        command = [python, "-m", f"benchmarks.peers.{name}_server"]
    return command, env, peer.label


@contextlib.contextmanager
def serving(
    name: str, version_dir: Path, probe: bytes, log_path: Path, timeout: float = 600, decode: str = "service"
) -> Iterator[Started]:
    port, grpc_port = free_port(), free_port()
    command, extra, label = launch(name, version_dir.resolve(), port, decode, grpc_port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **extra}, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_prediction(url, process, probe, timeout, log_path)
            startup_s = time.monotonic() - started
            yield Started(name, label, url, process.pid, startup_s, grpc_endpoint(name, grpc_port))
        finally:
            stop(process)


def wait_for_prediction(
    url: str, process: subprocess.Popen, probe: bytes, timeout: float, log_path: Path, give_up_after: int = 20
) -> None:
    """Until `probe` gets a prediction; a server that keeps answering errors other than 503
    (loading) `give_up_after` times in a row is broken, not slow."""
    deadline, refusals = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.post(f"{url}/predict/image", files={"file": ("probe.jpg", probe)}, timeout=30)
            if response.status_code == 200 and is_prediction(response.json()):
                return
            refusals = 0 if response.status_code == 503 else refusals + 1
            if refusals == give_up_after:
                raise RuntimeError(f"{url} answers HTTP {response.status_code}: {response.text[:200]}")
        time.sleep(0.5)
    raise TimeoutError(f"no prediction from {url} within {timeout:.0f} s; see {log_path}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then kill whatever of its tree is left: Ray and Triton leave helpers behind
    when their parent dies first."""
    try:
        tree = process_tree(process.pid)
    except psutil.NoSuchProcess:
        tree = []
    stop_process(process)
    for child in tree[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
