"""`python -m service` with several workers under concurrent decompression bombs: the process
tree stays within idle + workers × DECODE_BUDGET_MB, and every answer is JSON, 200 or 503."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
from PIL import Image
from served import serve

WORKERS, BUDGET_MB = 2, 64
MARGIN_MB = 48  # request bodies, sockets, Python objects of the requests in flight


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_concurrent_bombs_stay_within_the_workers_decode_budgets(shared_models, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buffer, "PNG")  # 26 KB sent, 36 MB decoded (60 estimated)
    files = [("file", ("a.png", buffer.getvalue())), ("file", ("b.png", buffer.getvalue()))]
    # Four decoder threads a worker: the budget, not the thread count, must be what bounds it.
    settings = {
        "WORKERS": str(WORKERS),
        "DECODE_THREADS": "4",
        "DECODE_BUDGET_MB": str(BUDGET_MB),
        "DECODE_WAIT_S": "30",
    }
    with serve(
        shared_models, tmp_path / "server.log", POLL_INTERVAL_S="0", ACCESS_LOG="false", **settings
    ) as running:
        pid = running.process.pid
        idle = tree_rss(pid)
        peak, done = idle, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(pid))
                time.sleep(0.02)

        def send(_) -> httpx.Response:
            with httpx.Client(base_url=running.url, timeout=120) as client:
                return client.post("/predict/image/cifar10", files=files)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(8) as clients:
            responses = list(clients.map(send, range(16)))
        done.set()
        sampler.join()
    assert all(r.headers["content-type"] == "application/json" for r in responses)
    assert {r.status_code for r in responses} <= {200, 503}
    assert sum(r.status_code == 200 for r in responses) >= 8
    bound = WORKERS * BUDGET_MB + MARGIN_MB
    assert (peak - idle) / 2**20 <= bound, f"peak {(peak - idle) / 2**20:.0f} MiB over idle; bound {bound}"
