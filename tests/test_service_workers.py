"""With WORKERS > 1, one scrape of /metrics tells the truth about every worker, not just its own:
requests counted, rows queued and in the model's hands, and nothing of a worker that died."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from deployments import HELD_ROWS, held_feature_model, open_gate, wait_for
from prometheus_client.parser import text_string_to_metric_families
from served import free_port, serve, stop

pytestmark = pytest.mark.server  # starts `python -m service`

ROOT = Path(__file__).resolve().parents[1]
ROW = [5.1, 3.5, 1.4, 0.2]


def healthz_count(metrics_text: str) -> float:
    pattern = r'^http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.MULTILINE))


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """One scrape, on a connection of its own (so any worker may answer it)."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def settings_for(tmp_path: Path, workers: int) -> dict[str, str]:
    # TMPDIR: where the workers' shared metric files go; REQUEST_TIMEOUT_S: requests wait for
    # as long as a test holds the model's calls
    return {
        "WORKERS": str(workers),
        "REQUEST_TIMEOUT_S": "600",
        "POLL_INTERVAL_S": "0",
        "LOG_LEVEL": "warning",
        "TMPDIR": str(tmp_path),
        "MAX_BATCH_SIZE": "16",
    }


def test_one_scrape_sums_the_requests_of_all_workers(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    with serve(model_dir, tmp_path / "server.log", **settings_for(tmp_path, 2)) as server:
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


@pytest.mark.parametrize("workers", [1, 2])
def test_queue_depth_counts_the_rows_waiting_in_every_worker_while_model_calls_are_held(
    tmp_path, shared_models, workers
):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    gate = tmp_path / "gate"
    held_feature_model(model_dir, gate)
    requests = 5

    def held() -> tuple[float, float]:
        now = scrape(server.url)
        key = (("model", "held"),)
        return now[("model_queue_depth", key)], now[("model_rows_in_progress", key)]

    log = tmp_path / "server.log"
    with serve(model_dir, log, **settings_for(tmp_path, workers)) as server:
        body = {"instances": [ROW] * HELD_ROWS}
        with ThreadPoolExecutor(requests) as clients:
            answers = []
            try:
                # One at a time, each sent once the last is counted: the first a worker gets is
                # taken into a model call (held at the gate), those after it queue behind it.
                for sent in range(1, requests + 1):
                    answer = clients.submit(httpx.post, f"{server.url}/predict/held", json=body, timeout=120)
                    answers.append(answer)
                    wait_for(lambda sent=sent: sum(held()) == sent * HELD_ROWS)
                queued, computing = held()
                # One call held in each worker that got a request, the rest of the rows waiting.
                assert computing in {HELD_ROWS * n for n in range(1, workers + 1)}
                assert queued == requests * HELD_ROWS - computing
                assert queued >= (requests - workers) * HELD_ROWS > 0
            finally:
                open_gate(gate)
            assert [answer.result().status_code for answer in answers] == [200] * requests
        assert held() == (0, 0)  # idle again: nothing waiting, nothing computing
        assert scrape(server.url)[("http_requests_in_flight", ())] == 1  # the scrape itself


def test_a_worker_that_dies_leaves_the_live_gauges(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    with serve(model_dir, tmp_path / "server.log", **settings_for(tmp_path, 2)) as server:

        def worker_pids() -> set[str]:
            memory = "process_worker_resident_memory_bytes"
            return {dict(labels)["pid"] for name, labels in scrape(server.url) if name == memory}

        pids = wait_for(lambda: len(found := worker_pids()) == 2 and found)
        victim = int(min(pids))
        os.kill(victim, signal.SIGKILL)  # no chance to clean up after itself
        # uvicorn's supervisor sees it die (within a second) and forgets its gauges; the worker
        # it starts instead shows up once its models are loaded, which is not waited for here.
        after = wait_for(lambda: str(victim) not in (found := worker_pids()) and found)
        assert pids - {str(victim)} <= after
        assert not list(Path(tmp_path).glob(f"prometheus-*/gauge_live*_{victim}.db"))


def test_every_worker_answers_healthz_while_its_models_load_and_readyz_once_they_are(tmp_path, shared_models):
    model_dir = tmp_path / "models"
    shutil.copytree(shared_models, model_dir)
    gate = tmp_path / "gate"
    held_feature_model(model_dir, gate)  # loading it waits: its warm-up batch of 3 rows is held
    port = free_port()
    env = {
        **os.environ,
        **settings_for(tmp_path, 2),
        "MAX_BATCH_SIZE": str(HELD_ROWS),
        "MODEL_DIR": str(model_dir),
        "PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        alive: set[str] = set()

        def both_workers_alive() -> bool:
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.get(f"{url}/healthz", headers={"Connection": "close"}, timeout=2)
                assert answer.status_code == 200
                alive.add(answer.headers["X-Served-By"])
            return len(alive) == 2

        wait_for(both_workers_alive, timeout=120)
        with pytest.raises(httpx.ReadTimeout):  # held by a worker still loading
            httpx.get(f"{url}/readyz", timeout=2)
        open_gate(gate)
        wait_for(lambda: httpx.get(f"{url}/readyz", headers={"Connection": "close"}).status_code == 200)
    finally:
        open_gate(gate)
        stop(process)
