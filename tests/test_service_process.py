"""`python -m service` in-process, with uvicorn's server and supervisor stood in for: what the
command decides before any worker starts (settings refused with why, the environment workers
inherit, one process or a supervisor, the exit status), the supervisor's own duties, and the
metrics workers share. The same end to end, with real workers: tests/test_service_workers.py,
tests/test_service_startup.py and tests/test_protocol_grpc.py (a server each, tens of seconds)."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from served import ROOT, free_port
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from service import metrics
from service.process import serve, supervisor
from service.process.layout import WORKERS_WHY
from service.settings import Settings


@pytest.fixture
def command(monkeypatch, tmp_path):
    """serve.main with uvicorn's Server and the Supervisor recorded instead of run, its SIGTERM
    handler and environment put back afterwards: what it built, in a namespace."""
    seen = SimpleNamespace(config=None, started=True, failed_to_start=False, devices=[], sockets=None)

    class Server:
        def __init__(self, config):
            seen.config, self.started = config, seen.started

        def run(self):
            seen.ran = "server"

    class Supervised:
        def __init__(self, config, sockets):
            seen.config, seen.sockets = config, sockets
            self.failed_to_start = seen.failed_to_start

        def run(self):
            seen.ran = "supervisor"

    monkeypatch.setattr(serve.uvicorn, "Server", Server)
    monkeypatch.setattr(serve, "Supervisor", Supervised)
    monkeypatch.setattr(serve, "quiet_tensorflow", seen.devices.append)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    for name in (WORKERS_WHY, *serve.MALLOC):
        monkeypatch.delenv(name, raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, handler)
        for opened in seen.sockets or ():
            opened.close()


def test_one_worker_runs_a_server_configured_from_the_settings(command, monkeypatch):
    monkeypatch.setenv("WORKERS", "1")
    monkeypatch.setenv("ACCESS_LOG", "false")
    monkeypatch.setenv("SHUTDOWN_TIMEOUT_S", "7")
    serve.main()
    config, settings = command.config, Settings()
    assert command.ran == "server" and config.app == "service.process.worker:app"
    assert (config.workers, config.host, config.port, config.log_level, config.access_log) == (
        1,
        settings.host,
        settings.port,
        settings.log_level,
        False,
    )
    assert (config.timeout_keep_alive, config.timeout_graceful_shutdown) == (settings.timeout_keep_alive_s, 7)
    assert command.devices == [settings.device]  # TensorFlow quietened before any worker imports it
    assert os.environ[WORKERS_WHY] == "WORKERS"  # set explicitly
    assert {name: os.environ[name] for name in serve.MALLOC} == serve.MALLOC


@pytest.mark.parametrize(
    "workers, failure",
    [("1", {"started": False}), ("2", {"failed_to_start": True})],
    ids=["a server that never started", "a worker that failed to start"],
)
def test_a_failed_start_up_exits_as_one(command, monkeypatch, workers, failure):
    monkeypatch.setenv("WORKERS", workers)
    for flag, value in failure.items():
        setattr(command, flag, value)
    with pytest.raises(SystemExit) as exit_:
        serve.main()
    assert exit_.value.code == STARTUP_FAILURE


def test_several_workers_run_under_the_supervisor_on_one_bound_socket_sharing_metrics(command, monkeypatch):
    monkeypatch.setenv("WORKERS", "2")
    serve.main()
    assert command.ran == "supervisor" and command.config.workers == 2
    [listening] = command.sockets
    assert listening.getsockname()[1] == Settings().port
    assert (ROOT / os.environ["PROMETHEUS_MULTIPROC_DIR"]).is_dir()


def test_ctrl_c_is_a_quiet_stop(command, monkeypatch):
    monkeypatch.setenv("WORKERS", "1")
    command.started = False  # never checked: interrupted first

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve.uvicorn.Server, "run", interrupted)
    serve.main()


def test_sigterm_after_the_drain_is_a_clean_exit(command, monkeypatch):
    monkeypatch.setenv("WORKERS", "1")
    serve.main()
    with pytest.raises(SystemExit) as exit_:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert exit_.value.code == 0


def test_unset_workers_say_how_the_layout_chose_them(command, monkeypatch):
    monkeypatch.setattr(serve, "layout_for", lambda device: SimpleNamespace(why=f"chosen for {device}"))
    monkeypatch.delenv("WORKERS", raising=False)
    monkeypatch.setattr(Settings, "model_post_init", lambda self, context: None, raising=False)
    serve.main()
    assert os.environ[WORKERS_WHY] == f"chosen for {Settings().device}"


def test_the_memory_settings_given_are_kept(command, monkeypatch):
    monkeypatch.setenv("WORKERS", "1")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    serve.main()
    assert os.environ["MALLOC_ARENA_MAX"] == "8"
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_without_tensorflow_the_command_says_which_extra_to_install(command, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "tensorflow" else find_spec(name)
    )
    with pytest.raises(SystemExit) as exit_:
        serve.main()
    assert 'pip install -e ".[cpu]"' in str(exit_.value.code)
    assert command.config is None


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (
            {"MAX_BATCH_SIZE": "0"},
            "invalid settings: MAX_BATCH_SIZE: Input should be greater than or equal to 1",
        ),
        (
            {"GRPC_PORT": "8123", "PORT": "8123"},
            "invalid settings: settings: GRPC_PORT and PORT are both 8123",
        ),
    ],
)
def test_invalid_settings_stop_the_command_naming_the_setting(command, monkeypatch, environment, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        serve.main()
    assert str(exit_.value.code).startswith(message)
    assert command.config is None


def test_a_grpc_port_another_server_holds_stops_the_command_and_a_free_one_does_not(tmp_path):
    with socket.socket() as other:  # a listener, without SO_REUSEPORT
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            serve.refuse_a_taken_grpc_port(Settings(model_dir=tmp_path, grpc_port=port, host="127.0.0.1"))
    assert str(exit_.value.code).startswith(f"GRPC_PORT {port} on 127.0.0.1 is taken (")
    serve.refuse_a_taken_grpc_port(Settings(model_dir=tmp_path, grpc_port=free_port(), host="127.0.0.1"))
    serve.refuse_a_taken_grpc_port(Settings(model_dir=tmp_path, grpc_port=0, host="256.0.0.1"))  # no gRPC
    if socket.has_ipv6:
        serve.refuse_a_taken_grpc_port(Settings(model_dir=tmp_path, grpc_port=free_port(), host="::1"))


# --- the supervisor ---------------------------------------------------------------------------


def worker(pid: int | None, exitcode: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, exitcode=exitcode)


def test_a_worker_the_supervisor_replaces_leaves_the_live_gauges(monkeypatch):
    forgotten = []
    monkeypatch.setattr(supervisor, "forget_worker", forgotten.append)

    def replace_the_dead(self):  # uvicorn's: a new process, pid None until it starts, for 12
        self.processes[1] = worker(None)

    monkeypatch.setattr(Multiprocess, "keep_subprocess_alive", replace_the_dead)
    parent = supervisor.Supervisor.__new__(supervisor.Supervisor)
    parent.processes = [worker(11), worker(12)]
    parent.keep_subprocess_alive()
    assert forgotten == [12]
    parent.keep_subprocess_alive()  # nothing died since
    assert forgotten == [12]


def test_stopping_the_supervisor_closes_its_listening_socket_before_it_tells_the_workers(monkeypatch):
    listening = socket.socket()
    told = []
    monkeypatch.setattr(Multiprocess, "terminate_all", lambda self: told.append(listening.fileno()))
    parent = supervisor.Supervisor.__new__(supervisor.Supervisor)
    parent.sockets, parent.processes = [listening], []
    parent.terminate_all()
    assert told == [-1]  # closed by then


def test_the_service_failed_to_start_when_a_worker_exited_as_failing_to_start():
    parent = supervisor.Supervisor.__new__(supervisor.Supervisor)
    parent.processes = [worker(1, 0), worker(2, None)]
    assert not parent.failed_to_start
    parent.processes.append(worker(3, STARTUP_FAILURE))
    assert parent.failed_to_start


# --- metrics shared between workers -----------------------------------------------------------


def run_python(code: str, **environment: str) -> str:
    """`code` in a fresh interpreter (prometheus_client reads its multiprocess folder on import)."""
    env = {**os.environ, **environment}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_workers_gauges_are_summed_and_one_forgotten_leaves_the_sum(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "stale.db").write_bytes(b"an earlier run's")
    shared = run_python(
        """
        import os
        from service.metrics import share_between_workers
        print(share_between_workers())
        """,
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    ).strip()
    assert shared == str(folder) and not (folder / "stale.db").exists()
    workers = {}  # pid: rows it says are queued
    for queued in (3, 4):  # two workers, each its own process
        pid = run_python(
            f"""
            import os
            from service.metrics import Metrics
            Metrics().queue_depth.labels("iris").set({queued})
            print(os.getpid())
            """,
            PROMETHEUS_MULTIPROC_DIR=str(folder),
        )
        workers[queued] = pid.strip()
    scrape = """
        import sys
        from service.metrics import Metrics, forget_worker
        for pid in sys.argv[1:]:
            forget_worker(int(pid))
        print(Metrics().exposition().decode())
        """
    assert 'model_queue_depth{model="iris"} 7.0' in run_python(scrape, PROMETHEUS_MULTIPROC_DIR=str(folder))
    forget_first = scrape.replace("sys.argv[1:]", repr([workers[3]]))
    assert 'model_queue_depth{model="iris"} 4.0' in run_python(
        forget_first, PROMETHEUS_MULTIPROC_DIR=str(folder)
    )


def test_without_shared_metrics_forgetting_a_worker_does_nothing_and_a_scrape_is_this_process(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(metrics.multiprocess, "mark_process_dead", lambda pid: pytest.fail("not shared"))
    metrics.forget_worker(os.getpid())
    own = metrics.Metrics()
    own.queue_depth.labels("iris").set(5)
    assert 'model_queue_depth{model="iris"} 5.0' in own.exposition().decode()


def test_a_metrics_folder_is_made_when_none_is_named(monkeypatch, tmp_path):
    # Set before it is deleted, so that monkeypatch puts back its absence: the call below sets it,
    # and a folder named there would turn every later test's metrics into files' (none).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(metrics.tempfile, "tempdir", None)
    made = metrics.share_between_workers()
    assert made.parent == tmp_path and made.name.startswith("prometheus-") and made.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made)
    nested = tmp_path / "a" / "b"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(nested))
    assert metrics.share_between_workers() == nested and nested.is_dir()


def test_each_worker_records_its_resident_memory():
    own = metrics.Metrics()
    own.record_memory()
    resident = own.registry.get_sample_value("process_worker_resident_memory_bytes")
    status = Path("/proc/self/status").read_text()
    kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))
    assert 0.9 * kib * 1024 < resident < 1.1 * kib * 1024


def test_python_m_service_serves_and_a_worker_importing_it_again_does_not(monkeypatch):
    """Worker processes (multiprocessing's spawn) import the main module again, under another
    name: only `python -m service` itself may call main()."""
    served = []
    monkeypatch.setattr(serve, "main", lambda: served.append("main"))
    monkeypatch.delitem(sys.modules, "service.__main__", raising=False)
    runpy.run_module("service", run_name="__mp_main__")  # as a spawned worker imports it
    assert served == []
    runpy.run_module("service", run_name="__main__")
    assert served == ["main"]
