"""`python -m service` as a new user starts it: the shipped models in models/, a free port, and
its log kept for the tests to read."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from served import READY, STARTED, serve

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
    waits until every worker is ready unless told not to. Its stdout and stderr go to `log`."""
    until = READY if ready else STARTED
    with serve(
        SHIPPED_MODELS, log, until, ready_timeout=180, unset=UNSET, POLL_INTERVAL_S="0", **settings
    ) as running:
        yield running.process, running.port
