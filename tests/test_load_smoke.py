"""Smoke test of the load-testing path: the real service, started as the benchmark starts it
(two worker processes), serving the tiny exports of conftest under a few seconds of locust on
every endpoint, v2 included. It proves that the locustfile, its payloads and the service agree;
it measures nothing (see `benchmarks/`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from served import serve

from benchmarks.load import run_locust

pytestmark = pytest.mark.server  # starts `python -m service`


def test_service_answers_locust_without_failures(shared_models, tmp_path):
    workers = {"WORKERS": "2", "INTRA_OP_THREADS": "1"}
    with serve(shared_models, tmp_path / "service.log", ready_timeout=180, **workers) as server:
        run = run_locust(server.url, users=4, seconds=8, prefix=tmp_path / "locust" / "smoke")

    failures = Path(f"{run.prefix}_failures.csv").read_text() + Path(f"{run.prefix}.log").read_text()
    assert run.exit_code == 0, failures
    assert run.total.requests > 0
    assert run.total.failures == 0
    assert set(run.by_name) == {"/predict/image", "/predict/iris", "/v2/models/[model]/infer image_bytes"}
