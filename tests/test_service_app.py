"""The app factory's own duties, beside the routes it mounts: the decoder threads yield the CPU,
numpy's BLAS runs one thread per caller, requests skip FastAPI's OpenTelemetry, and the gRPC
server the app opened is closed with it."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from deployments import serving_both_doors
from fastapi.testclient import TestClient
from opentelemetry import _logs as otel_logs
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from threadpoolctl import threadpool_info, threadpool_limits

from service import app as app_module


@pytest.mark.parametrize("own, asked_for", [(0, 10), (5, 15), (15, 19), (19, 19)])
def test_a_decoder_thread_runs_ten_steps_nicer_than_its_process_up_to_the_lowest(monkeypatch, own, asked_for):
    """docs/operating/security.md: decoder threads run at niceness +10 (19 is the lowest)."""
    asked = []
    monkeypatch.setattr(os, "getpriority", lambda which, who: own)
    monkeypatch.setattr(os, "setpriority", lambda *args: asked.append(args))
    app_module.yield_the_cpu()
    assert asked == [(os.PRIO_PROCESS, threading.get_native_id(), asked_for)]


@pytest.mark.parametrize("refusal", [PermissionError, AttributeError])
def test_a_decoder_thread_starts_where_its_priority_cannot_be_changed(monkeypatch, refusal):
    """Lowering a thread's niceness needs privileges, and platforms other than Linux have no
    per-thread priority: the decoder runs as it is."""

    def refuse(*args):
        raise refusal("not here")

    monkeypatch.setattr(os, "setpriority", refuse)
    app_module.yield_the_cpu()


def test_building_the_app_limits_numpys_blas_to_one_thread_per_caller(tmp_path):
    with threadpool_limits(2, user_api="blas"):
        app_module.create_app(app_module.Settings(model_dir=tmp_path, grpc_port=0))
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and set(blas) == {1}


def test_the_grpc_port_closes_with_the_app(shared_models):
    with serving_both_doors(shared_models, grpc_max_connection_age_s=0) as (client, channel):
        port = int(client.app.state.settings.grpc_port)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # open while it serves
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_requests_never_look_for_opentelemetry_providers(tmp_path, monkeypatch):
    """FastAPI's native OpenTelemetry, left on, asks for the tracer, meter and logger providers
    on every request, a cost a profile found; the service exports Prometheus metrics instead."""
    looked = []
    for module, getter in [
        (otel_trace, "get_tracer_provider"),
        (otel_metrics, "get_meter_provider"),
        (otel_logs, "get_logger_provider"),
    ]:
        real = getattr(module, getter)
        monkeypatch.setattr(module, getter, lambda real=real, getter=getter: looked.append(getter) or real())
    with TestClient(app_module.create_app(app_module.Settings(model_dir=tmp_path, grpc_port=0))) as client:
        looked.clear()  # the lifespan may look once; requests must not
        assert client.get("/healthz").status_code == 200
        assert client.get("/v2/health/live").status_code == 200
    assert looked == []
