"""Shared fixtures: tiny but real SavedModels exported once per session (see `deployments`), apps
serving copies of them, a test environment free of the developer's service settings, and CI's
rule that the end-to-end tests never skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# `deployments` imports TensorFlow (seconds): the fixtures import it, so that pytest-xdist's
# controller process, which runs no test, starts without it.
from service.settings import Settings
from training.data import CIFAR10_LABELS

# Set by CI (.ci/run): tests marked `required_in_ci` fail where they would skip, so a missing
# tool, schema or model can never pass CI silently.
REQUIRE_ALL = os.environ.get("CIFAR_SERVING_REQUIRE_ALL") == "1"


# Set by `scripts/test --fast`: the tests marked `server` are left out, and any other that starts
# one fails, naming the marker it needs, so the fast tier stays what it says.
FAST = os.environ.get("CIFAR_SERVING_FAST") == "1"
# What starts a server, by the program an argument list runs.
SERVER_PROGRAMS = ("docker", "chromedriver", "chromium", "prometheus", "locust")


def starts_a_server(args) -> bool:
    argv = [str(arg) for arg in ([args] if isinstance(args, str | os.PathLike) else args)]
    program = os.path.basename(argv[0]) if argv else ""
    python_module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    return (
        program in SERVER_PROGRAMS
        or python_module in ("service", "locust", "uvicorn")
        or (python_module.startswith("benchmarks."))
    )


def pytest_configure(config):
    if not FAST:
        return
    start = subprocess.Popen.__init__

    def guarded(self, args, *more, **options):
        if starts_a_server(args):
            pytest.fail(f"the fast tier starts no server ({args!r}): mark this test `server`")
        start(self, args, *more, **options)

    subprocess.Popen.__init__ = guarded  # this process only: the fast tier's, which ends after


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and REQUIRE_ALL and item.get_closest_marker("required_in_ci"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which CIFAR_SERVING_REQUIRE_ALL=1 forbids: {reason}"
    return report


@pytest.fixture(scope="session", autouse=True)
def _no_service_settings_from_the_shell():
    """Settings read the environment: an API_KEY or DEVICE in the developer's shell must not
    change what the tests see, nor reach the servers they start."""
    fields = set(Settings.model_fields)
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.lower() in fields:
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Version folders: cifar10 v1 and v2 (other weights), iris v1, a 16x24 image model, and an
    iris-shaped model whose weights are all ones (its outputs overflow on huge features)."""
    from deployments import IMAGE_SPEC, IRIS_LABELS, IRIS_SPEC, export, tiny_feature_model, tiny_image_model

    root = tmp_path_factory.mktemp("exports")
    return {
        "cifar10": export(tiny_image_model(32, 32, 10, seed=1), root, "cifar10", IMAGE_SPEC, CIFAR10_LABELS),
        "cifar10-v2": export(
            tiny_image_model(32, 32, 10, seed=2), root, "cifar10", IMAGE_SPEC, CIFAR10_LABELS
        ),
        "iris": export(tiny_feature_model(4, 3, seed=3), root, "iris", IRIS_SPEC, IRIS_LABELS),
        "wide": export(
            tiny_image_model(16, 24, 2, seed=4),
            root,
            "wide",
            {**IMAGE_SPEC, "shape": [16, 24, 3]},
            ["left", "right"],
        ),
        "ones": export(tiny_feature_model(4, 3, seed=5, kernel="ones"), root, "ones", IRIS_SPEC, IRIS_LABELS),
    }


@pytest.fixture
def model_dir(tmp_path, exports) -> Path:
    """A fresh MODEL_DIR with cifar10 v1 and iris v1, for tests that change it."""
    from deployments import install

    root = tmp_path / "models"
    install(exports["cifar10"], root)
    install(exports["iris"], root)
    return root


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory, exports) -> Path:
    from deployments import install

    root = tmp_path_factory.mktemp("shared") / "models"
    install(exports["cifar10"], root)
    install(exports["iris"], root)
    return root


@pytest.fixture(scope="session")
def client(shared_models):
    """One app for the tests that only read: cifar10 v1 and iris v1, ready."""
    from deployments import serving

    with serving(shared_models) as client:
        yield client
