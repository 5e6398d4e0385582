"""`python -m service` on a free port, over real sockets, for the official protocol clients."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_service(model_dir: Path, log_path: Path, **environment: str):
    """Yields the base URL of `python -m service` serving `model_dir`, once it is ready."""
    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "PORT": str(port),
        "POLL_INTERVAL_S": "0",
        "LOG_LEVEL": "warning",
        **environment,
    }
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log
        )

        def ready():
            assert process.poll() is None, "server exited"
            try:
                return httpx.get(f"{base}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, timeout=180, interval=0.2)
            yield base
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()
            log.seek(0)
            print(log.read())
