"""Told to stop, a replica with DRAIN_DELAY_S first says it is not ready while it goes on
serving, so that load balancers stop sending it requests before it closes its listener."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
from deployments import wait_for
from payloads import GOOD_FEATURES
from served import serve

from service.process.draining import Drain

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.server
def test_sigterm_turns_readiness_off_while_requests_are_still_served_then_exits(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    settings = {"POLL_INTERVAL_S": "0", "LOG_LEVEL": "warning", "DRAIN_DELAY_S": "3"}
    with serve(model_dir, tmp_path / "server.log", **settings) as server:
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # With several workers the server process passes the signal on to each (some 0.1 s).
        readiness = wait_for(lambda: (r := httpx.get(f"{server.url}/readyz")).status_code == 503 and r, 1)
        alive = httpx.get(f"{server.url}/healthz")
        prediction = httpx.post(f"{server.url}/predict/iris", json=GOOD_FEATURES)
        answered_within = time.monotonic() - signalled
        assert server.process.wait(timeout=60) == 0
        stopped_after = time.monotonic() - signalled
    assert answered_within < 2.5, "too slow to tell anything about the delay"
    assert (readiness.status_code, readiness.json()["detail"]) == (503, "draining: stopping soon")
    assert alive.status_code == 200 and prediction.status_code == 200
    assert stopped_after >= 3, "the listener closed before the delay was over"


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
