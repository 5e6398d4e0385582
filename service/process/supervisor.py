"""The server process of `python -m service` with several workers: uvicorn's own supervisor,
which restarts a worker that dies, plus duties of ours when one dies, when one fails to start,
and when the service stops.

Workers write their gauges to files in the shared metrics folder (service/metrics.py). A worker
that stops normally takes its live gauges out of the sums itself; one that is killed (out of
memory, SIGKILL) or crashes cannot, and its last queue depth would be summed into every scrape
until the server restarts. The supervisor is the one that sees it go, so it does it for it.

Stopping, the supervisor closes its own copy of the HTTP listening socket before it tells the
workers: once the workers close theirs (after DRAIN_DELAY_S), new connections are refused at
once instead of waiting, unanswered, in the queue of a socket nobody accepts from until the
supervisor exits. And a worker that failed to start (a port it cannot bind) stops the service
with a failure status, not 0."""

from __future__ import annotations

from uvicorn.config import STARTUP_FAILURE
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

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    @property
    def failed_to_start(self) -> bool:
        """A worker exited as failing to start, which stopped the service."""
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)
