"""Start-up as a new user sees it: `python -m service` on the shipped models logs no error-level
line on a CPU-only machine, and one line per worker saying what it serves and where."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading

import grpc
import pytest
from deployments import serving, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from served import ROOT, free_port, stop
from shipped_service import newest_versions, shipped_service

from service import registry as registry_module
from service.process import device, ready
from service.process.layout import layout_for
from service.protocols.grpc_server import GrpcServer

cpu_only = pytest.mark.skipif(
    device.nvidia_driver_present(), reason="about machines without an NVIDIA driver"
)

# An error-level line from TensorFlow's C++ log (E0000 ...), Python's logging or uvicorn.
ERROR_LINE = re.compile(r"^(E\d{4} |.*\bERROR\b|.*\bCRITICAL\b|Traceback)")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The default start-up (DEVICE=auto), its log once it has announced itself."""
    log = tmp_path_factory.mktemp("startup") / "service.log"
    with shipped_service(log) as (_, port):
        wait_for(lambda: "ready:" in log.read_text(), timeout=30)
        yield log, port


def shipped_log(started) -> str:
    return started[0].read_text()


@pytest.mark.server
@cpu_only
def test_startup_on_a_cpu_only_machine_logs_no_error_line(started):
    text = shipped_log(started)
    errors = [line for line in text.splitlines() if ERROR_LINE.match(line)]
    assert not errors, text


@pytest.mark.server
def test_startup_shows_none_of_tensorflows_info_notices(started):
    """No "WARNING: All log messages before absl::InitializeLog() ..." announcing oneDNN's notice."""
    text = shipped_log(started)
    assert "absl::InitializeLog" not in text, text
    assert not re.search(r"^I\d{4} ", text, re.M), text


@pytest.mark.server
def test_one_line_says_what_is_served_on_which_device_by_how_many_workers_and_where(started):
    _, port = started
    workers = layout_for("auto").workers  # the default: a worker per core on CPUs
    wait_for(lambda: len(ready_lines(shipped_log(started))) >= workers, timeout=30)
    lines = ready_lines(shipped_log(started))
    assert len(lines) == workers, shipped_log(started)  # one per worker
    line = lines[0]
    for name, version in newest_versions().items():
        assert f"{name} v{version}" in line
    assert "on /CPU:0" in line or "on /GPU:0" in line
    counted = f"{workers} workers" if workers > 1 else "1 worker"
    assert f"; {counted} ({layout_for('auto').why});" in line  # how many, and why
    assert f"API docs http://127.0.0.1:{port}/docs" in line
    assert "; gRPC 127.0.0.1:" in line
    assert all(other.split(" ready: ")[1] == line.split(" ready: ")[1] for other in lines)


def ready_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ready: " in line]


@pytest.mark.server
@cpu_only
def test_device_gpu_without_a_gpu_fails_loudly(tmp_path):
    log = tmp_path / "service.log"
    with shipped_service(log, ready=False, DEVICE="gpu") as (process, _):
        assert process.wait(120) != 0
    assert "DEVICE=gpu but TensorFlow sees no GPU" in log.read_text()


@pytest.mark.server
@cpu_only
def test_a_worker_that_fails_to_start_stops_the_service_with_a_failure_status(tmp_path):
    log = tmp_path / "service.log"  # two workers: the supervisor's exit, not uvicorn's own
    with shipped_service(log, ready=False, DEVICE="gpu", WORKERS="2") as (process, _):
        assert process.wait(120) != 0
    assert "DEVICE=gpu but TensorFlow sees no GPU" in log.read_text()


def test_tensorflow_logging_is_left_alone_where_its_errors_could_be_real(monkeypatch):
    monkeypatch.setattr(device, "_looks_for_cuda", lambda: True)
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: False)
    environ: dict[str, str] = {}
    device.quiet_tensorflow("gpu", environ)  # asked for a GPU: CUDA's complaints matter
    assert environ == {}
    device.quiet_tensorflow("auto", environ)  # no driver: there is no GPU to complain about
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "3"}
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    device.quiet_tensorflow("cpu", environ)  # the user's choice stands
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: True)
    environ = {}
    device.quiet_tensorflow("auto", environ)  # a driver: a failure to use it is worth seeing
    assert environ == {}


@pytest.mark.server
def test_under_a_server_of_its_own_the_app_says_it_is_one_process(tmp_path):
    """`uvicorn service.main:app` (README's alternative) runs one process, whatever the cores."""
    log = tmp_path / "uvicorn.log"
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port)]
    env = {**os.environ, "MODEL_DIR": "models", "POLL_INTERVAL_S": "0", "GRPC_PORT": str(free_port())}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ready_lines(log.read_text()), timeout=120)
    finally:
        stop(process)
    [line] = ready_lines(log.read_text())
    assert "; 1 worker (this process, started by a server other than python -m service);" in line


def test_the_grpc_port_opens_only_once_the_models_are_loaded_and_before_the_ready_line(
    model_dir, monkeypatch, caplog
):
    """Nothing holds a gRPC call while models load (as WaitForModels holds HTTP requests): a
    port open early would answer calls with "not ready" that another worker could have served.
    Loading is held until the app has started and answered a request; meanwhile the port must
    refuse connections; then it opens after both models have loaded, and before the ready line
    that names it."""
    events: list[str] = []
    gate = threading.Event()
    load, start = registry_module.load_predictor, GrpcServer.start

    def held_load(*args):
        gate.wait(60)
        loaded = load(*args)
        events.append("model loaded")
        return loaded

    async def spied_start(self):
        events.append("grpc opens")
        return await start(self)

    class ReadyLine(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("ready:"):
                events.append("ready line")

    monkeypatch.setattr(registry_module, "load_predictor", held_load)
    monkeypatch.setattr(GrpcServer, "start", spied_start)
    caplog.set_level(logging.INFO, logger=ready.__name__)
    logging.getLogger(ready.__name__).addHandler(handler := ReadyLine())
    port = free_port()
    try:
        with serving(model_dir, ready=False, grpc_port=port) as client:
            assert client.get("/healthz").status_code == 200  # the event loop has run its tasks
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            assert events == []
            gate.set()
            wait_for(lambda: "ready line" in events, timeout=60)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        gate.set()
        logging.getLogger(ready.__name__).removeHandler(handler)
    assert events == ["model loaded", "model loaded", "grpc opens", "ready line"]
