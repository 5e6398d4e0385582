"""Run an ASGI app under uvicorn in a subprocess on a free 127.0.0.1 port, and watch its
memory and CPU from outside, the way an operator would."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from service.process.layout import layout_for

REPO = Path(__file__).resolve().parent.parent
APPS = ("service", "baseline")


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    process: subprocess.Popen
    grpc_port: int = 0  # the service's gRPC port (GRPC_PORT); other apps ignore it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(app: str, port: int) -> list[str]:
    """The service as its container runs it, so its own settings (read from the environment,
    like MODEL_DIR, HOST and PORT) apply; the baseline as a tutorial runs it. Both keep
    uvicorn's default access log."""
    if app == "service":
        return [sys.executable, "-m", "service"]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.baseline:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@contextlib.contextmanager
def serve(
    app: str,
    model_dir: str | Path,
    log_path: Path,
    ready_timeout: float = 300,
    settings: dict[str, str] | None = None,
    until_ready: bool = True,
) -> Iterator[Running]:
    """Start `app` (one of APPS) serving `model_dir`, yield once /readyz answers 200 (with
    `until_ready` false, once it answers at all), stop it on exit. `settings` are environment
    variables the caller's environment may override. Its output goes to `log_path`, not a pipe,
    so a chatty server can never block."""
    port = free_port()
    env = {
        **(settings or {}),
        **os.environ,
        "MODEL_DIR": str(Path(model_dir).resolve()),
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    # A free port of its own unless told: concurrent runs must never share the default one,
    # which SO_REUSEPORT would let them do silently.
    env.setdefault("GRPC_PORT", str(free_port()))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command(app, port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            # Unset, the service runs its default layout's worker count (service/process/layout.py).
            workers = int(env.get("WORKERS") or layout_for(env.get("DEVICE", "auto")).workers)
            wait_ready(url, process, ready_timeout, log_path, 10 if until_ready else 0, workers)
            yield Running(url, process.pid, process, int(env["GRPC_PORT"]))
        finally:
            stop(process)


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `grace_s`."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(
    url: str,
    process: subprocess.Popen,
    timeout: float,
    log_path: Path,
    in_a_row: int = 10,
    workers: int = 1,
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
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                ready += 1
                answered.add(response.headers.get("X-Served-By"))
                every_worker = None in answered or len(answered) >= workers
                if ready >= in_a_row and every_worker:
                    return
                continue
        except urllib.error.HTTPError:
            if not in_a_row:
                return
            ready = 0  # loading models (503)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            ready = 0  # not listening yet
        time.sleep(0.25)
    raise TimeoutError(f"{url}/readyz not 200 from every worker within {timeout:.0f} s; see {log_path}")


def process_tree(pid: int) -> list[psutil.Process]:
    """The server and any workers it forked: their memory and CPU are all the server's."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss_bytes(pid: int) -> int:
    return sum(p.memory_info().rss for p in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in process_tree(pid))
