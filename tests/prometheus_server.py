"""A real Prometheus (Debian's package: scripts/install-prometheus) on 127.0.0.1, scraping what
a test serves, and its HTTP query API."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from deployments import wait_for
from served import free_port

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "helm" / "cifar-serving" / "monitoring"
RULES = MONITORING / "rules.yaml"
SCRAPE_INTERVAL_S = 1


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`; skips without it (a failure in CI)."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} (scripts/install-prometheus: Debian's prometheus package)")
    return found


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The result of an instant query (at `at`, a Unix time, or now); fails on an error."""
        params = {"query": expr, **({"time": str(at)} if at is not None else {})}
        answer = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=30).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def scalar(self, expr: str, at: float | None = None) -> float:
        """The value of a query that returns one series."""
        [series] = self.query(expr, at)
        return float(series["value"][1])

    def rule_groups(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/rules", timeout=30).json()["data"]["groups"]


@contextlib.contextmanager
def prometheus(
    targets: list[str], folder: Path, rule_files: tuple[Path, ...] = (RULES,)
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port, job "api") every second and evaluating
    `rule_files` as often, its data in `folder`; stopped on exit."""
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "api", "static_configs": [{"targets": targets}]}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        tool("prometheus"),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(folder / "prometheus.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url, process), timeout=60)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "prometheus exited; see prometheus.log"
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False
