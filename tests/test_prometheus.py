"""A real Prometheus in the loop: the rules pass promtool's checks and unit tests, and a
Prometheus scraping `python -m service` (two workers) under 64 clients stores a queue depth
above 0, back at 0 when idle, while every dashboard query and the autoscaling rule evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from deployments import wait_for
from prometheus_server import MONITORING, RULES, prometheus, tool
from served import ROOT, serve

# CI installs prometheus (scripts/install-prometheus): there a skip fails (tests/conftest.py).
pytestmark = pytest.mark.required_in_ci

CLIENTS = 64
LOAD_S = 25
WINDOW = "20s"  # judged over the last 20 s of the load


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, check=False)


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(MONITORING / "rules-test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_loosened_alert(tmp_path):
    shutil.copy(MONITORING / "rules-test.yaml", tmp_path)
    rules = RULES.read_text()
    assert "cifar_serving:http_error_ratio:rate5m > 0.05" in rules
    (tmp_path / "rules.yaml").write_text(rules.replace("rate5m > 0.05", "rate5m > 0.5"))
    result = promtool("test", "rules", str(tmp_path / "rules-test.yaml"))
    assert result.returncode != 0 and "CifarServingErrorRatioHigh" in result.stdout + result.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, its $job variable meaning all jobs."""
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [
        (panel["title"], target["expr"].replace("$job", ".*"))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def adapter_query(group_by: str, matchers: str) -> str:
    """prometheus-adapter's metricsQuery from the chart's autoscaling values, filled in as the
    adapter fills it for an HPA asking for one pod metric."""
    values = yaml.safe_load((ROOT / "deploy/helm/cifar-serving/values-autoscaling.yaml").read_text())
    [rule] = values["prometheusAdapter"]["rules"]["custom"]
    return rule["metricsQuery"].replace("<<.GroupBy>>", group_by).replace("<<.LabelMatchers>>", matchers)


@pytest.fixture(scope="module")
def loaded(shared_models, tmp_path_factory):
    """A Prometheus that scraped `python -m service` (WORKERS=2) idle, then under CLIENTS
    locust users for LOAD_S seconds, then idle again; with the times the load started and ended."""
    folder = tmp_path_factory.mktemp("prometheus")
    settings = {"WORKERS": "2", "POLL_INTERVAL_S": "0", "LOG_LEVEL": "warning", "ACCESS_LOG": "false"}
    with serve(shared_models, folder / "server.log", **settings) as server:
        target = server.url.removeprefix("http://")
        with prometheus([target], folder) as prom:
            wait_for(lambda: prom.query('up{job="api"} == 1'))
            started = time.time()
            subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless"]
                + ["--users", str(CLIENTS), "--spawn-rate", str(CLIENTS), "--run-time", f"{LOAD_S}s"]
                + ["--host", server.url, "--only-summary", "--loglevel", "WARNING"],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                timeout=LOAD_S + 60,
                check=False,  # judged by what Prometheus stored
            )
            ended = time.time()
            # Idle: the last 5 s of scrapes all read 0 (the queue empties within a batch or two).
            wait_for(
                lambda: (
                    time.time() > ended + 5
                    and prom.scalar("max_over_time(sum(model_queue_depth)[5s:1s])") == 0
                ),
                timeout=60,
            )
            yield prom, started, ended


@pytest.mark.server
def test_prometheus_stores_a_queue_depth_above_zero_under_load_and_zero_when_idle(loaded):
    prom, _, ended = loaded
    at = ended - 1  # the load's last second, before locust stops its users
    most = prom.scalar(f"max_over_time(sum(model_queue_depth)[{WINDOW}:1s])", at)
    mean = prom.scalar(f"avg_over_time(sum(model_queue_depth)[{WINDOW}:1s])", at)
    print(f"queue depth stored over the last {WINDOW} of {CLIENTS} clients: max {most:.0f}, mean {mean:.1f}")
    assert most > 0 and mean > 0
    assert prom.scalar("max_over_time(sum(model_queue_depth)[5s:1s])") == 0
    assert prom.scalar("sum(model_rows_in_progress)") == 0


@pytest.mark.server
def test_every_dashboard_query_evaluates(loaded):
    prom, _, ended = loaded
    # Unset until something sets them: failures (none happened), the decode budget (the
    # decoders' budget sets it).
    may_be_empty = {"Failures by kind (5 min)", "Decode memory budget in use"}
    empty = [title for title, expr in dashboard_queries() if not prom.query(expr, ended - 1)]
    assert set(empty) <= may_be_empty, f"no data for {set(empty) - may_be_empty}"


@pytest.mark.server
def test_the_recording_rules_evaluate_without_error(loaded):
    prom, _, _ = loaded
    rules = [rule for group in prom.rule_groups() for rule in group["rules"]]
    assert len(rules) == 11
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []


@pytest.mark.server
def test_the_autoscaling_rule_gives_each_pod_its_queue_depth(loaded):
    prom, _, ended = loaded
    per_pod = prom.query(adapter_query("instance", 'model="cifar10"'), ended - 1)
    assert len(per_pod) == 1 and float(per_pod[0]["value"][1]) > 0
