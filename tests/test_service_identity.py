"""Every response names the replica and worker process that answered (X-Served-By)."""

from __future__ import annotations

import os
import socket

from deployments import serving

ME = f"{socket.gethostname()}/{os.getpid()}"


def test_every_response_names_the_replica_that_answered(client):
    answers = [
        client.get("/healthz"),
        client.get("/models"),
        client.get("/no-such-route"),  # 404
        client.post("/predict/iris", json={"features": "not numbers"}),  # 422
        client.post("/predict/image", content=b"x" * 64, headers={"Content-Type": "text/plain"}),
    ]
    assert [response.status_code >= 400 for response in answers] == [False, False, True, True, True]
    assert [response.headers.get("X-Served-By") for response in answers] == [ME] * len(answers)


def test_refusals_before_the_app_also_name_the_replica(model_dir):
    with serving(model_dir, max_upload_bytes=100) as client:
        json = {"Content-Type": "application/json"}
        too_big = client.post("/predict/iris", content=b"{" + b" " * 200 + b"}", headers=json)
    assert too_big.status_code == 413
    assert too_big.headers["X-Served-By"] == ME


def test_models_say_which_version_this_replica_serves(client):
    served = {model["name"]: model["live_version"] for model in client.get("/models").json()["models"]}
    assert served == {"cifar10": "1", "iris": "1"}


def test_an_unexpected_failure_names_the_replica_too(shared_models, monkeypatch):
    # Starlette answers these from its outermost layer, outside every middleware added to the app.
    with serving(shared_models) as client:
        predictor = client.app.state.registry.models["iris"].predictor
        monkeypatch.setattr(predictor, "predict", lambda batch: 1 / 0)
        failed = client.post("/predict/iris", json={"features": [5.1, 3.5, 1.4, 0.2]})
    assert failed.status_code == 500
    assert failed.headers.get("X-Served-By") == ME
