"""`python -m service`: serve with uvicorn on HOST:PORT, everything else from the environment.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and the gRPC server stops taking
calls, at once; the requests and calls in flight get SHUTDOWN_TIMEOUT_S together to finish, then
the app drains its batchers and the process exits 0. A port that cannot be bound (HTTP's or
gRPC's) stops it at start-up with the reason and a non-zero status.
"""

import contextlib
import importlib.util
import os
import signal
import socket
import sys

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE

from service.metrics import share_between_workers
from service.process.device import quiet_tensorflow
from service.process.layout import WORKERS_WHY, layout_for
from service.process.supervisor import Supervisor
from service.settings import Settings


def main() -> None:
    settings = read_settings()
    if importlib.util.find_spec("tensorflow") is None:
        # TensorFlow comes in an extra, one build or the other (pyproject.toml says why).
        sys.exit('TensorFlow is not installed: pip install -e ".[cpu]" (or ".[gpu]" on an NVIDIA GPU host)')
    # Before any worker imports TensorFlow; workers inherit the environment.
    quiet_tensorflow(settings.device)
    give_memory_back()
    # After its graceful shutdown uvicorn raises the signal again, which would end the process
    # as killed by SIGTERM (status 143); a clean drain is a successful exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    explicit = "workers" in settings.model_fields_set
    os.environ[WORKERS_WHY] = "WORKERS" if explicit else layout_for(settings.device).why
    refuse_a_taken_grpc_port(settings)
    config = uvicorn.Config(
        "service.process.worker:app",  # by name, so that each worker process builds its own
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=settings.timeout_keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    # What uvicorn.run does, with a supervisor that also clears the metrics of a worker that
    # died (service/process/supervisor.py).
    with contextlib.suppress(KeyboardInterrupt):
        if settings.workers > 1:
            share_between_workers()
            supervisor = Supervisor(config, sockets=[config.bind_socket()])
            supervisor.run()
            if supervisor.failed_to_start:  # its reason is in the log, just above
                sys.exit(STARTUP_FAILURE)
            return
        server = uvicorn.Server(config)  # one process: its own registry is the whole truth
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)


def read_settings() -> Settings:
    """The settings from the environment; a wrong one stops the service with what is wrong."""
    try:
        return Settings()
    except ValidationError as error:
        problems = (
            f"{'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        sys.exit("invalid settings: " + "; ".join(problems))


# glibc malloc, read by each worker process as it starts (uvicorn starts workers afresh):
# a fixed mmap threshold keeps every block of 128 KiB and more (decoded images, request bodies,
# numpy arrays) in its own mapping, returned to the system when freed, instead of glibc raising
# the threshold after the first large free and keeping later ones in its heaps; two arenas
# instead of eight per core keep the decoder and TensorFlow threads' heaps from multiplying.
# See docs/operating/security.md for the measurement. Set either in the environment to override.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}


def give_memory_back() -> None:
    for name, value in MALLOC.items():
        os.environ.setdefault(name, value)


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
