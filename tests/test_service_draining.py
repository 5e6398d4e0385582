"""Told to stop, a replica with DRAIN_DELAY_S first says it is not ready while it goes on
serving, so that load balancers stop sending it requests before it closes its listener."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from deployments import wait_for
from payloads import GOOD_FEATURES
from served import serve

from service.process.draining import Drain

ROOT = Path(__file__).resolve().parents[1]


def test_the_stop_listeners_run_when_the_servers_own_shutdown_starts_after_the_delay(monkeypatch):
    """The gRPC server stops taking calls at the moment the HTTP server stops taking connections
    (the server's handler), not before (while the delay still serves) nor after its drain."""
    happened = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: happened.append("server stops"))
    try:
        drain = Drain(delay_s=0.2)
        drain.on_start(lambda: happened.append("health off"))
        drain.on_stop(lambda: happened.append("grpc stops"))
        drain.install()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert happened == ["health off"]
        wait_for(lambda: len(happened) == 3, 5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert happened == ["health off", "grpc stops", "server stops"]


def sigterm_handler_after(drain: Drain, server_handler) -> tuple[object, object]:
    """Install `drain` in front of `server_handler`: (the handler SIGTERM now runs, the one before)."""
    previous = signal.signal(signal.SIGTERM, server_handler)
    drain.install()
    return signal.getsignal(signal.SIGTERM), previous


def test_with_no_delay_the_listeners_run_and_the_server_stops_at_once_with_the_signal():
    happened = []
    drain = Drain(delay_s=0)
    drain.on_start(lambda: happened.append("health off"))
    drain.on_stop(lambda: happened.append("grpc stops"))
    handler, previous = sigterm_handler_after(
        drain, lambda signum, frame: happened.append(("server", signum))
    )
    try:
        handler(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert happened == ["health off", "grpc stops", ("server", signal.SIGTERM)]
    assert drain.started.is_set()


def test_a_second_sigterm_during_the_delay_stops_the_server_at_once():
    happened = []
    drain = Drain(delay_s=60)
    drain.on_start(lambda: happened.append("health off"))
    handler, previous = sigterm_handler_after(drain, lambda signum, frame: happened.append("server stops"))
    try:
        handler(signal.SIGTERM, None)
        assert happened == ["health off"] and drain.started.is_set()
        handler(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert happened == ["health off", "server stops"]


def test_the_delay_does_not_keep_a_process_that_exits_meanwhile_alive():
    drain = Drain(delay_s=60)
    handler, previous = sigterm_handler_after(drain, lambda signum, frame: None)
    try:
        handler(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]
    assert timers and all(t.daemon for t in timers)
    for timer in timers:
        timer.cancel()


def server_handler(signum, frame):
    pass


@pytest.mark.parametrize(
    ("drain", "server", "installed"),
    [
        (Drain(delay_s=0), server_handler, False),  # nothing to do first: the server's own
        (Drain(delay_s=1), server_handler, True),
        (Drain(delay_s=1), signal.SIG_DFL, False),  # no server handling signals: not ours to add
    ],
)
def test_the_drain_goes_in_front_of_a_servers_handler_only_when_it_has_something_to_do(
    drain, server, installed
):
    handler, previous = sigterm_handler_after(drain, server)
    signal.signal(signal.SIGTERM, previous)
    assert (handler is not server) == installed


def test_a_listener_alone_is_something_to_do_without_a_delay():
    for add in (Drain.on_start, Drain.on_stop):
        drain = Drain(delay_s=0)
        add(drain, lambda: None)
        handler, previous = sigterm_handler_after(drain, server_handler)
        signal.signal(signal.SIGTERM, previous)
        assert handler is not server_handler


def test_outside_the_main_thread_signals_are_left_alone():
    """An in-process test client runs the app's lifespan in a thread of its own."""
    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        thread = threading.Thread(target=Drain(delay_s=1).install)
        thread.start()
        thread.join()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.server
def test_sigterm_turns_readiness_off_while_requests_are_still_served_then_exits(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    settings = {"POLL_INTERVAL_S": "0", "LOG_LEVEL": "warning", "DRAIN_DELAY_S": "3"}
    with serve(model_dir, tmp_path / "server.log", **settings) as server:
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # With several workers the server process passes the signal on to each (some 0.1 s).
        # Answered at all, these were answered within the delay: after it, nothing listens.
        readiness = wait_for(lambda: (r := httpx.get(f"{server.url}/readyz")).status_code == 503 and r, 3)
        alive = httpx.get(f"{server.url}/healthz")
        prediction = httpx.post(f"{server.url}/predict/iris", json=GOOD_FEATURES)
        assert server.process.wait(timeout=60) == 0
        stopped_after = time.monotonic() - signalled
    assert (readiness.status_code, readiness.json()["detail"]) == (503, "draining: stopping soon")
    assert alive.status_code == 200 and prediction.status_code == 200
    assert stopped_after >= 3, "the listener closed before the delay was over"
