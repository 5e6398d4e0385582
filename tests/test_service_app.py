"""The app factory's own duties, beside the routes it mounts: the decoder threads yield the CPU,
numpy's BLAS runs one thread per caller, and the gRPC server the app opened is closed with it."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from deployments import serving_both_doors
from threadpoolctl import threadpool_info, threadpool_limits

from service import app as app_module


def test_a_decoder_thread_asks_for_a_lower_priority_of_its_own(monkeypatch):
    asked = []
    monkeypatch.setattr(os, "setpriority", lambda *args: asked.append(args))
    app_module.yield_the_cpu()
    assert asked == [(os.PRIO_PROCESS, threading.get_native_id(), app_module.DECODER_NICENESS)]


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
