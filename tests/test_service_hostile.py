"""`python -m service` with several workers under concurrent decompression bombs: the process
tree stays within idle + workers × DECODE_BUDGET_MB, and every answer is JSON, 200 or 503."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image
from served import serve

pytestmark = pytest.mark.server  # starts `python -m service`

WORKERS, BUDGET_MB = 2, 64
MARGIN_MB = 48  # request bodies, sockets, Python objects of the requests in flight


def tree(pid: int) -> list[int]:
    root = psutil.Process(pid)
    return [p.pid for p in [root, *root.children(recursive=True)]]


def kib(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) * 1024


def reset_peaks(pids: list[int]) -> None:
    """Start each process's high-water mark of resident memory (VmHWM) again from what it holds
    now, so the kernel keeps each one's peak from here: none is missed between samples."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")


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
        pids = tree(running.process.pid)
        idle = sum(kib(pid, "VmRSS:") for pid in pids)
        reset_peaks(pids)

        def send(_) -> httpx.Response:
            # Patient clients, who say so: the budget, not the default deadline, is on trial.
            patient = {"Request-Timeout": "120"}
            with httpx.Client(base_url=running.url, timeout=120, headers=patient) as client:
                return client.post("/predict/image/cifar10", files=files)

        with ThreadPoolExecutor(8) as clients:
            responses = list(clients.map(send, range(16)))
        # Each process's own peak, added up: at least the tree's peak, whenever each came.
        peak = sum(kib(pid, "VmHWM:") for pid in pids)
    assert all(r.headers["content-type"] == "application/json" for r in responses)
    assert {r.status_code for r in responses} <= {200, 503}
    assert sum(r.status_code == 200 for r in responses) >= 8
    bound = WORKERS * BUDGET_MB + MARGIN_MB
    assert (peak - idle) / 2**20 <= bound, f"peak {(peak - idle) / 2**20:.0f} MiB over idle; bound {bound}"
