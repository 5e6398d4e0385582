"""`python -m service` on a free port of 127.0.0.1, over real sockets, for the tests that need
a real server (official protocol clients, a browser): `benchmarks.server.serve`, once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from benchmarks.server import serve


@contextlib.contextmanager
def running_service(model_dir: Path, log_path: Path, ready: bool = True, **settings: str) -> Iterator[str]:
    """Yields the base URL of `python -m service` serving `model_dir` once every worker is ready
    (or, with `ready` false, once it answers at all); `settings` are its environment variables."""
    settings = {"POLL_INTERVAL_S": "0", "ACCESS_LOG": "false", **settings}
    with serve(
        "service", model_dir, log_path, ready_timeout=240, settings=settings, until_ready=ready
    ) as running:
        yield running.url
