"""With WORKERS > 1, one scrape of /metrics counts the requests of every worker, not just its own."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
from served import serve

ROOT = Path(__file__).resolve().parents[1]


def healthz_count(metrics_text: str) -> float:
    pattern = r'^http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.MULTILINE))


def test_one_scrape_sums_the_requests_of_all_workers(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    # TMPDIR: where the workers' shared metric files go
    settings = {"WORKERS": "2", "POLL_INTERVAL_S": "0", "LOG_LEVEL": "warning", "TMPDIR": str(tmp_path)}
    with serve(model_dir, tmp_path / "server.log", **settings) as server:
        # A new connection each time, so the kernel hands them to both workers.
        workers, sent = set(), 0
        while len(workers) < 2 or sent < 20:
            assert sent < 2000, f"only {workers} answered"
            response = httpx.get(f"{server.url}/healthz", headers={"Connection": "close"})
            workers.add(response.headers["X-Served-By"])
            sent += 1
        scrapes = [httpx.get(f"{server.url}/metrics", headers={"Connection": "close"}) for _ in range(6)]
        assert {healthz_count(scrape.text) for scrape in scrapes} == {sent}
    assert not list(Path(tmp_path).glob("prometheus-*/gauge_live*")), "workers' live gauges left behind"
