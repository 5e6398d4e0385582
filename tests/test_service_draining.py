"""Told to stop, a replica with DRAIN_DELAY_S first says it is not ready while it goes on
serving, so that load balancers stop sending it requests before it closes its listener."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from deployments import wait_for
from test_service_errors import GOOD_FEATURES

from benchmarks.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_turns_readiness_off_while_requests_are_still_served_then_exits(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "PORT": str(port),
        "POLL_INTERVAL_S": "0",
        "LOG_LEVEL": "warning",
        "DRAIN_DELAY_S": "3",
    }
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:

        def ready():
            assert process.poll() is None, "server exited"
            try:
                return httpx.get(f"{base}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=120, interval=0.2)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        readiness = httpx.get(f"{base}/readyz")
        alive = httpx.get(f"{base}/healthz")
        prediction = httpx.post(f"{base}/predict/iris", json=GOOD_FEATURES)
        answered_within = time.monotonic() - signalled
        assert process.wait(timeout=60) == 0
        stopped_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        print(log.read())
    assert answered_within < 2.5, "too slow to tell anything about the delay"
    assert (readiness.status_code, readiness.json()["detail"]) == (503, "draining: stopping soon")
    assert alive.status_code == 200 and prediction.status_code == 200
    assert stopped_after >= 3, "the listener closed before the delay was over"
