"""Draining: told to stop (SIGTERM), a replica first reports itself not ready for DRAIN_DELAY_S
while it goes on serving, so that load balancers checking /readyz stop sending it requests
before it closes its listener; then the server's own graceful shutdown finishes what is in flight.

Without the delay, requests that a balancer sends in the instant between SIGTERM and its next
health check reach a closing server: those still waiting to be accepted or read are dropped.
Kubernetes does the same from outside with the pod's preStop sleep (the chart sets one, and
keeps this delay at 0); behind HAProxy or any balancer that only checks health, only the
service can."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


class Drain:
    """The SIGTERM handler put in front of the server's own; `started` once a stop is asked for."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.started = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._stop_listeners: list[Callable[[], None]] = []

    def on_start(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in the signal handler: it must only schedule work) when SIGTERM
        starts the drain, before the delay: the gRPC server's health turns NOT_SERVING there."""
        self._listeners.append(listener)

    def on_stop(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in the signal handler: it must only schedule work) when the server's
        own graceful shutdown starts, after the delay: the gRPC server stops taking calls there,
        as the HTTP server stops taking connections, so the two drain together."""
        self._stop_listeners.append(listener)

    def install(self) -> None:
        """Call in the serving process once its server handles signals (the app's start-up):
        SIGTERM then starts the delay, and the server's handler runs when it ends."""
        nothing_first = not (self.delay_s or self._listeners or self._stop_listeners)
        if nothing_first or threading.current_thread() is not threading.main_thread():
            return  # nothing to do first, or an in-process test client: signals are not ours
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return

        def stop(signum, frame):
            for listener in self._stop_listeners:
                listener()
            server_handler(signum, frame)

        def delay_then_stop(signum, frame):
            if self.started.is_set():  # a second SIGTERM: stop now
                stop(signum, frame)
                return
            self.started.set()
            for listener in self._listeners:
                listener()
            if not self.delay_s:
                stop(signum, frame)
                return
            timer = threading.Timer(self.delay_s, stop, (signum, frame))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, delay_then_stop)
