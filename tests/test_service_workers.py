"""With WORKERS > 1, one scrape of /metrics counts the requests of every worker, not just its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from deployments import wait_for

from benchmarks.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def healthz_count(metrics_text: str) -> float:
    pattern = r'^http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.MULTILINE))


def test_one_scrape_sums_the_requests_of_all_workers(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "PORT": str(port),
        "WORKERS": "2",
        "POLL_INTERVAL_S": "0",
        "LOG_LEVEL": "warning",
        "TMPDIR": str(tmp_path),  # where the workers' shared metric files go
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
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

        wait_for(ready, timeout=180, interval=0.2)
        # A new connection each time, so the kernel hands them to both workers.
        workers, sent = set(), 0
        while len(workers) < 2 or sent < 20:
            assert sent < 2000, f"only {workers} answered"
            response = httpx.get(f"{base}/healthz", headers={"Connection": "close"})
            workers.add(response.headers["X-Served-By"])
            sent += 1
        scrapes = [httpx.get(f"{base}/metrics", headers={"Connection": "close"}) for _ in range(6)]
        assert {healthz_count(scrape.text) for scrape in scrapes} == {sent}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        print(log.read())
    assert not list(Path(tmp_path).glob("prometheus-*/gauge_live*")), "workers' live gauges left behind"
