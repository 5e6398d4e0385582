"""`python -m service` as a new user starts it: the shipped models in models/, a free port, and
its log kept for the tests to read."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from deployments import wait_for

from benchmarks.server import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = ROOT / "models"
# Settings a developer's environment might hold that would change what a newcomer sees.
UNSET = ("MODEL_VERSIONS", "API_KEY", "WORKERS", "DEVICE", "HOST", "LOG_LEVEL", "TF_CPP_MIN_LOG_LEVEL")


def newest_versions(model_dir: Path = SHIPPED_MODELS) -> dict[str, int]:
    """Each shipped model's newest version, read from the folders (hidden staging ones aside)."""
    return {
        folder.name: max(int(version.name) for version in folder.iterdir() if version.name.isdigit())
        for folder in sorted(model_dir.iterdir())
        if folder.is_dir() and any(version.name.isdigit() for version in folder.iterdir())
    }


@contextlib.contextmanager
def shipped_service(log: Path, ready: bool = True, **settings: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """The service on the shipped models with `settings` (environment names) on a free port;
    waits until /readyz answers 200 unless told not to. Its stdout and stderr go to `log`."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in UNSET}
    env.update({"MODEL_DIR": "models", "PORT": str(port), "POLL_INTERVAL_S": "0", **settings})
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def is_ready() -> bool:
        assert process.poll() is None, f"the service exited ({process.returncode}):\n{log.read_text()}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        if ready:
            wait_for(is_ready, timeout=180, interval=0.2)
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
