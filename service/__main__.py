"""`python -m service`: serve with uvicorn on HOST:PORT, everything else from the environment.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and lets in-flight requests finish
(for up to SHUTDOWN_TIMEOUT_S), then the app drains its batchers and the process exits 0.
"""

import importlib.util
import signal
import socket
import sys

import uvicorn

from service.device import quiet_tensorflow
from service.metrics import share_between_workers
from service.settings import Settings


def main() -> None:
    settings = Settings()
    if importlib.util.find_spec("tensorflow") is None:
        # TensorFlow comes in an extra, one build or the other (pyproject.toml says why).
        sys.exit('TensorFlow is not installed: pip install -e ".[cpu]" (or ".[gpu]" on an NVIDIA GPU host)')
    # Before any worker imports TensorFlow; workers inherit the environment.
    quiet_tensorflow(settings.device)
    # After its graceful shutdown uvicorn raises the signal again, which would end the process
    # as killed by SIGTERM (status 143); a clean drain is a successful exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if settings.workers > 1:  # else one process: its own registry is the whole truth
        share_between_workers()
    refuse_a_taken_grpc_port(settings)
    uvicorn.run(
        "service.main:app",  # by name, so that each worker process builds its own
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=settings.timeout_keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


def refuse_a_taken_grpc_port(settings: Settings) -> None:
    """The workers bind GRPC_PORT with SO_REUSEPORT (to share it among themselves), which would
    as silently share it with another server already there, splitting its clients between the
    two; uvicorn refuses a taken HTTP port, and so does this for gRPC's."""
    if not settings.grpc_port:
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family) as probe:  # no SO_REUSEPORT: any listener there refuses it
        try:
            probe.bind((settings.host, settings.grpc_port))
        except OSError as error:
            sys.exit(
                f"GRPC_PORT {settings.grpc_port} on {settings.host} is taken ({error.strerror}):"
                " another server listens there; choose another port, or GRPC_PORT=0 for no gRPC"
            )


if __name__ == "__main__":  # worker processes import this module again; only the first serves
    main()
