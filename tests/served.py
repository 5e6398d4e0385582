"""`python -m service` on a free port of 127.0.0.1, over real sockets, for the tests that need a
real server (official protocol clients, a browser, signals, several workers): the tests' one
launcher, with its one terminate-then-kill. (The benchmarks have their own, `benchmarks.server`:
neither imports the other.)"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.process.layout import layout_for

ROOT = Path(__file__).resolve().parents[1]
READY, ANSWERING, STARTED = "ready", "answering", "started"  # how long `serve` waits


@dataclass(frozen=True)
class Running:
    url: str
    port: int
    process: subprocess.Popen
    grpc_port: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    model_dir: str | Path,
    log_path: Path,
    until: str = READY,
    ready_timeout: float = 240,
    unset: Iterable[str] = (),
    **settings: str,
) -> Iterator[Running]:
    """`python -m service` serving `model_dir` with `settings` (environment variables), its
    output in `log_path` (a file, never a pipe a chatty server could fill). Yields once every
    worker is ready (`until` READY), once it answers at all (ANSWERING), or at once (STARTED);
    stops it on exit. `unset`: variables of this environment the server must not see."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in set(unset)}
    env.update(settings)
    env.update({"MODEL_DIR": str(Path(model_dir).resolve()), "HOST": "127.0.0.1", "PORT": str(port)})
    # A free gRPC port of its own unless told: servers must never share the default one, which
    # the workers' SO_REUSEPORT would let them do.
    env.setdefault("GRPC_PORT", str(free_port()))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        if until != STARTED:
            # Unset, the service runs its default layout's worker count (service/process/layout.py).
            workers = int(env.get("WORKERS") or layout_for(env.get("DEVICE", "auto")).workers)
            wait_ready(url, process, ready_timeout, log_path, 10 if until == READY else 0, workers)
        yield Running(url, port, process, int(env["GRPC_PORT"]))
    finally:
        stop(process)


@contextlib.contextmanager
def running_service(model_dir: Path, log_path: Path, ready: bool = True, **settings: str) -> Iterator[str]:
    """The base URL of the service serving `model_dir` without polling it or logging each request,
    once every worker is ready (or, with `ready` false, once it answers at all)."""
    settings = {"POLL_INTERVAL_S": "0", "ACCESS_LOG": "false", **settings}
    with serve(model_dir, log_path, READY if ready else ANSWERING, **settings) as running:
        yield running.url


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `grace_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(
    url: str, process: subprocess.Popen, timeout: float, log_path: Path, in_a_row: int = 10, workers: int = 1
) -> None:
    """Until /readyz answers 200 `in_a_row` times on fresh connections and, where the server
    names the worker that answered (X-Served-By), from `workers` different workers: each
    connection reaches one of them, and all must have loaded their models (a worker still
    importing TensorFlow accepts none, so a run of 200s alone can come from one worker). With
    `in_a_row` 0, any answer will do (a server meant to stay not ready)."""
    deadline = time.monotonic() + timeout
    ready = 0
    answered: set[str | None] = set()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)  # a fresh connection each time
        except httpx.TransportError:
            ready = 0  # not listening yet
        else:
            if not in_a_row:
                return
            if response.status_code == 200:
                ready += 1
                answered.add(response.headers.get("X-Served-By"))
                if ready >= in_a_row and (None in answered or len(answered) >= workers):
                    return
                continue
            ready = 0  # loading models (503)
        time.sleep(0.25)
    raise TimeoutError(f"{url}/readyz not 200 from every worker within {timeout:.0f} s; see {log_path}")
