"""Replicas behind a load balancer (docker-compose.scale.yml): the configuration says what the
drill proves, and the drill (scripts/fault-drill) proves it with real containers: no request
fails while a replica is stopped, restarted and a new model version is published."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SCALE = REPO / "docker-compose.scale.yml"
HAPROXY = REPO / "docker" / "lb" / "haproxy.cfg"
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags: `!reset` clears what the file underneath set."""


ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node) or [])


def scale_file() -> dict:
    return yaml.load(SCALE.read_text(), Loader=ComposeLoader)  # noqa: S506 (a SafeLoader)


# CI installs helm and Docker: there a skip fails (tests/conftest.py, CIFAR_SERVING_REQUIRE_ALL).
pytestmark = pytest.mark.required_in_ci


def test_scale_file_matches_the_compose_specification():
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"no Compose Specification schema at {COMPOSE_SCHEMA}")
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(scale_file())]
    assert not errors, "\n".join(errors)


def test_only_the_load_balancer_is_published_on_localhost():
    services = scale_file()["services"]
    assert services["api"]["ports"] == [], "replicas must not compete for one host port"
    assert services["lb"]["ports"] == [
        "127.0.0.1:${API_PORT:-8000}:8000",
        "127.0.0.1:${API_GRPC_PORT:-8081}:8081",
    ]
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_load_balancer_retries_connection_failures_only_and_sends_only_to_ready_replicas():
    config = HAPROXY.read_text()
    directives = [line.split("#")[0].strip() for line in config.splitlines()]
    # Never `empty-response`, `response-timeout`, `5xx` or `all-retryable-errors`: those resend
    # requests that a replica received.
    assert [d for d in directives if d.startswith("retry-on")] == ["retry-on conn-failure"]
    assert "option redispatch 1" in directives
    assert "option httpchk GET /readyz" in directives and "http-check expect status 200" in directives
    templates = {re.search(r"\bapi:(\d+)\b", d)[1]: d for d in directives if d.startswith("server-template")}
    http, grpc = (str(Settings.model_fields[name].default) for name in ("port", "grpc_port"))
    assert set(templates) == {http, grpc}
    assert all("resolvers docker" in template for template in templates.values())
    # gRPC in HTTP/2 on both sides, so each call is balanced; checked on the HTTP port's /readyz.
    assert "bind :8081 proto h2" in directives and "proto h2" in templates[grpc]
    assert f"check port {http} check-proto h1" in templates[grpc]


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
        compose = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0 and compose.returncode == 0


def drill(
    script: str, report_dir: Path, timeout: int, **settings: str
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run scripts/`script` against Compose (skipped without Docker), with `settings` in its
    environment; its result and summary.json."""
    if not docker_works():
        pytest.skip(
            "no working Docker with the compose plugin (on these machines: ../shared/tools/docker-here)"
        )
    env = {**os.environ, **settings, "REPORT_DIR": str(report_dir), "PYTHON": sys.executable}
    result = subprocess.run(
        [str(REPO / "scripts" / script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(result.stdout[-6000:], result.stderr[-3000:])
    return result, json.loads((report_dir / "summary.json").read_text())


@pytest.mark.server
def test_replicas_answer_every_request_while_one_restarts_and_a_version_is_published(tmp_path):
    # The 1- and 3-replica measurements before the drill are reported, not judged: 5 s each
    # instead of the script's 15 (the drill itself keeps its 60 s, for the restart to fit in).
    result, summary = drill("fault-drill", tmp_path, timeout=900, CLEAN_TIME="5s")
    assert summary["passed"] == {
        "workers_follow_the_cpu_limit": True,
        "no_failed_request": True,
        "every_replica_answered": True,
        "restarted_replica_back_in_the_pool": True,
        "every_replica_on_new_version": True,
    }, summary
    assert result.returncode == 0
    new = summary["new_version"]
    assert summary["drill"]["cifar10_versions_answered"].get(new, 0) > 0, "the new version never answered"


def test_prometheus_scrapes_every_replica_by_the_services_name_and_loads_the_charts_rules():
    prometheus = scale_file()["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]  # the fault drill runs without it
    [mount] = prometheus["volumes"]
    assert (REPO / mount["source"]).resolve() == REPO / "deploy/helm/cifar-serving/monitoring/rules.yaml"
    config = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == [mount["target"]]
    [job] = config["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    assert discovery["names"] == ["api"] and discovery["type"] == "A"
    assert discovery["port"] == Settings.model_fields["port"].default


@pytest.mark.server
def test_the_hpa_would_add_replicas_under_load_and_return_to_the_minimum_when_idle(tmp_path):
    # Each phase just long enough for the 30 s window the HPA's query averages over (read 2 s
    # before a phase ends), plus locust's start and stop; the idle phase 8 s more, for the
    # queue to drain after the high load: 112 s of load and quiet instead of the script's 125.
    result, summary = drill("autoscale-drill", tmp_path, timeout=1200, PHASE_TIME="36s", IDLE_TIME="40s")
    assert summary["passed"] == {"rises_under_load": True, "back_to_min_when_idle": True}, summary
    assert summary["high"]["desired_replicas"] > summary["min"] == summary["idle"]["desired_replicas"]
    assert result.returncode == 0
