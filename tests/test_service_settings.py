"""Configuration from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.process import layout
from service.process.layout import usable_cores
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_are_safe():
    """The defaults as documented, written out here rather than read from the code."""
    settings = Settings(workers=1, intra_op_threads=1, inter_op_threads=1)  # the machine's: below
    assert settings.model_dump() == {
        "model_dir": Path("models"),
        "model_versions": {},
        "poll_interval_s": 10.0,
        "model_runtime": "auto",  # the export's fast form on CPUs, the SavedModel on GPUs
        "tta": "none",
        "device": "auto",
        "workers": 1,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "max_batch_size": 128,
        "max_batch_wait_ms": 2.0,
        "max_queue_size": 2048,
        "decode_threads": 2,
        "undo_enlargements": True,
        "max_upload_bytes": 10_485_760,  # 10 MiB
        "body_timeout_s": 30.0,
        "request_timeout_s": 0.7,  # below clients' own timeouts: under overload, time for those still waiting
        "max_image_pixels": 50_000_000,
        "decode_budget_mb": 192,
        "decode_wait_s": 2.0,
        "max_request_pixels": 64_000_000,
        "api_key": None,  # off unless asked for
        "cors_origins": [],  # off unless asked for
        "host": "127.0.0.1",  # not reachable from other machines unless asked for
        "port": 8000,
        "grpc_port": 8081,  # KServe's and MLServer's
        "grpc_max_connection_age_s": 0.25,  # one channel's calls reach every worker
        "log_level": "info",
        "access_log": True,
        "timeout_keep_alive_s": 5,
        "shutdown_timeout_s": 30,
        "drain_delay_s": 0.0,
    }


def test_grpc_cannot_share_the_http_port():
    with pytest.raises(
        ValidationError, match="GRPC_PORT and PORT are both 9000: gRPC needs a port of its own"
    ):
        Settings(port=9000, grpc_port=9000)
    assert Settings(port=9000, grpc_port=0).grpc_port == 0  # no gRPC at all


def test_settings_cannot_change_once_read():
    with pytest.raises(ValidationError, match="frozen"):
        Settings().port = 1


# Each bounded knob: its lowest allowed value, and one just below it.
LOWEST = {
    "poll_interval_s": (0, -0.5),
    "workers": (1, 0),
    "intra_op_threads": (0, -1),
    "inter_op_threads": (0, -1),
    "max_batch_size": (1, 0),
    "max_batch_wait_ms": (0, -0.5),
    "max_queue_size": (1, 0),
    "decode_threads": (1, 0),
    "max_upload_bytes": (1, 0),
    "body_timeout_s": (0.5, 0),  # must be positive: zero would refuse every body
    "request_timeout_s": (0.001, 0),  # must be positive: zero would refuse every request
    "max_image_pixels": (1, 0),
    "decode_budget_mb": (1, 0),
    "decode_wait_s": (0, -0.5),
    "max_request_pixels": (1, 0),
    "timeout_keep_alive_s": (1, 0),
    "shutdown_timeout_s": (1, 0),
    "drain_delay_s": (0, -0.5),
    "port": (0, -1),
    "grpc_port": (0, -1),  # 0: no gRPC
    "grpc_max_connection_age_s": (0, -0.5),  # 0: connections kept
}


@pytest.mark.parametrize("field", LOWEST)
def test_each_limit_takes_its_lowest_value_and_refuses_below_it(field):
    lowest, below = LOWEST[field]
    fits = {"max_batch_size": 1} if field == "max_queue_size" else {}  # the queue holds a batch
    assert getattr(Settings(**fits, **{field: lowest}), field) == lowest
    with pytest.raises(ValidationError, match=field):
        Settings(**fits, **{field: below})


@pytest.mark.parametrize("field", ["port", "grpc_port"])
def test_a_port_is_at_most_65535(field):
    assert getattr(Settings(**{field: 65535}), field) == 65535
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 65536})


def test_environment_variables_in_capitals(monkeypatch):
    for name, value in {
        "MODEL_DIR": "/srv/models",
        "MODEL_VERSIONS": "cifar10=1, iris=2",
        "CORS_ORIGINS": "https://a.example, https://b.example",
        "API_KEY": "k",
        "DEVICE": "cpu",
        "LOG_LEVEL": "WARNING",
        "MAX_BATCH_SIZE": "64",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model_dir == Path("/srv/models")
    assert settings.model_versions == {"cifar10": 1, "iris": 2}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.api_key.get_secret_value() == "k"
    assert (settings.device, settings.log_level, settings.max_batch_size) == ("cpu", "warning", 64)


def test_an_empty_api_key_means_no_key(monkeypatch):
    monkeypatch.setenv("API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    "values",
    [
        {"model_versions": "cifar10"},
        {"device": "tpu"},
        {"max_batch_size": 0},
        {"max_batch_size": 64, "max_queue_size": 32},
    ],
)
def test_bad_settings_fail_at_start_up(values):
    with pytest.raises(ValidationError):
        Settings(**values)


@pytest.fixture
def no_gpu_driver(monkeypatch):
    monkeypatch.setattr(layout, "nvidia_driver_present", lambda: False)


def test_unset_the_layout_is_a_worker_per_usable_core_each_running_models_on_one_thread(no_gpu_driver):
    settings = Settings()
    assert settings.workers == layout.worker_count(usable_cores(), layout.memory_limit())[0] >= 1
    assert (settings.intra_op_threads, settings.inter_op_threads) == (1, 1)


def test_the_cores_counted_are_those_the_process_may_run_on():
    """CPU affinity (taskset, a container's cpuset) limits the default; a cgroup CPU quota
    (docker --cpus, a Kubernetes CPU limit) does too: scripts/fault-drill checks it in containers."""
    count = "from service.settings import Settings; print(Settings(device='cpu').workers)"
    pinned = subprocess.run(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{0}}); {count}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert pinned.stdout.split() == ["1"], pinned.stderr


def test_an_explicit_layout_wins(monkeypatch, no_gpu_driver):
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("INTRA_OP_THREADS", "0")
    settings = Settings()
    assert (settings.workers, settings.intra_op_threads, settings.inter_op_threads) == (3, 0, 1)


def test_a_gpu_gets_one_worker_and_tensorflows_own_thread_pools(monkeypatch):
    monkeypatch.setattr(layout, "nvidia_driver_present", lambda: True)
    for device in ("auto", "gpu"):
        settings = Settings(device=device)
        assert (settings.workers, settings.intra_op_threads, settings.inter_op_threads) == (1, 0, 0)
    assert Settings(device="cpu").workers == layout.layout_for("cpu").workers > 0  # the GPU is not used


GIB = 2**30


@pytest.mark.parametrize(
    ("cores", "memory", "workers"),
    [
        (2, None, 2),  # no memory limit: a worker per core...
        (32, None, 8),  # ...up to 8, as a 32-core host without limits runs
        (8, 3 * GIB, 3),  # the memory limit holds three workers of 1 GiB
        (2, 16 * GIB, 2),  # plenty of memory: the cores decide
        (4, GIB // 2, 1),  # too little for one: one all the same
    ],
)
def test_workers_are_the_fewest_of_cores_and_what_fits_the_memory_limit(cores, memory, workers):
    count, why = layout.worker_count(cores, memory)
    assert count == workers
    assert f"{cores} usable cores" in why
    assert ("memory limit" in why) == (memory is not None or cores > layout.MAX_UNLIMITED_WORKERS)


def test_the_ready_line_says_how_the_memory_limit_chose_the_workers():
    assert layout.worker_count(8, 3 * GIB + GIB // 2) == (
        3,
        "8 usable cores, 3 fit in the 3.5 GiB memory limit at 1 GiB each",
    )


def test_the_memory_limit_is_read_from_the_cgroup(tmp_path):
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert layout.memory_limit((v2, v1)) is None  # no cgroup files: no limit
    v1.write_text(f"{2**63 - 4096}\n")  # cgroup v1's "no limit"
    assert layout.memory_limit((v2, v1)) is None
    v1.write_text(f"{3 * GIB}\n")  # cgroup v1 alone (no v2 file) with a limit
    assert layout.memory_limit((v2, v1)) == 3 * GIB
    v2.write_text("max\n")
    assert layout.memory_limit((v2, v1)) is None
    v2.write_text(f"{4 * GIB}\n")
    assert layout.memory_limit((v2, v1)) == 4 * GIB
