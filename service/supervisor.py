"""The server process of `python -m service` with several workers: uvicorn's own supervisor,
which restarts a worker that dies, plus one duty of ours when it does.

Workers write their gauges to files in the shared metrics folder (service/metrics.py). A worker
that stops normally takes its live gauges out of the sums itself; one that is killed (out of
memory, SIGKILL) or crashes cannot, and its last queue depth would be summed into every scrape
until the server restarts. The supervisor is the one that sees it go, so it does it for it."""

from __future__ import annotations

from uvicorn.supervisors.multiprocess import Multiprocess

from service.metrics import forget_worker


class Supervisor(Multiprocess):
    """uvicorn's multi-worker supervisor; a worker it replaces leaves the live gauges too."""

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                forget_worker(pid)
