"""Drive a server with the repository's locustfile, headless, in a subprocess, and read back
locust's own statistics.

A subprocess rather than locust's library API: importing locust monkey-patches the whole
interpreter for gevent, which must not happen to the process that also runs TensorFlow and
starts servers. It also keeps the load generator's CPU time separately measurable.

Figures come from locust's `--json-file`, written from the final statistics at exit; its
`_stats.csv` is a snapshot taken every second, so it can miss the last second's requests
and failures.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.server import REPO, cpu_seconds

LOCUSTFILE = REPO / "locustfile.py"


@dataclass(frozen=True)
class Stats:
    """Requests of one name, or all of them; times in ms. Locust records response times
    rounded (whole ms under 100 ms, two significant digits above), and percentiles inherit
    that resolution."""

    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class LoadRun:
    users: int
    seconds: float  # of load, as asked
    wall_s: float  # of the whole locust process, start-up included
    exit_code: int
    total: Stats
    by_name: dict[str, Stats]
    client_cpu_s: float  # CPU time locust itself used
    server_cpu_s: float | None  # CPU time the server used meanwhile, if its pid was given
    prefix: str  # of locust's files


def run_locust(
    url: str,
    users: int,
    seconds: float,
    prefix: Path,
    tags: tuple[str, ...] = (),
    server_pid: int | None = None,
    every: float = 5,
    on_tick: Callable[[float], None] | None = None,
    image_files: Path | None = None,
) -> LoadRun:
    """Run `users` closed-loop users for `seconds` against `url`; locust's JSON, CSV, HTML and
    log go to `prefix`*. `on_tick(elapsed_s)` is called about every `every` seconds meanwhile.
    `image_files`: a folder whose files the image tasks send instead of the locustfile's own."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds:g}s",
        "--json-file",
        str(prefix),
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if tags:
        command += ["--tags", *tags]
    server_cpu_before = cpu_seconds(server_pid) if server_pid else None
    client_cpu_before = _children_cpu_seconds()
    started = time.monotonic()
    with open(f"{prefix}.log", "wb") as log:
        env = {**os.environ, "IMAGE_FILES": str(image_files)} if image_files else None
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        # locust stops itself after -t; the deadline guards against it hanging, and the
        # `finally` against leaving it running when `on_tick` fails (say, the server died).
        deadline = started + seconds + 60
        try:
            while True:
                try:
                    process.wait(timeout=every)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"locust still running after {seconds + 60:.0f} s; see {prefix}.log"
                        ) from None
                    if on_tick:
                        on_tick(time.monotonic() - started)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    wall_s = time.monotonic() - started
    server_cpu = cpu_seconds(server_pid) - server_cpu_before if server_pid else None
    entries = json.loads(Path(f"{prefix}.json").read_text())
    by_name = {entry["name"]: summarize(entry) for entry in entries}
    return LoadRun(
        users,
        seconds,
        wall_s,
        process.returncode,
        summarize(*entries),
        by_name,
        _children_cpu_seconds() - client_cpu_before,
        server_cpu,
        str(prefix),
    )


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished children: after `wait()`, that includes locust's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarize(*entries: dict) -> Stats:
    """Merge entries of locust's JSON statistics (one per request name) into one Stats."""
    times: dict[int, int] = {}
    for entry in entries:
        for ms, count in entry["response_times"].items():
            times[int(ms)] = times.get(int(ms), 0) + count
    requests = sum(entry["num_requests"] for entry in entries)
    started = min((entry["start_time"] for entry in entries), default=0)
    ended = max((entry["last_request_timestamp"] or started for entry in entries), default=0)
    return Stats(
        requests,
        sum(entry["num_failures"] for entry in entries),
        requests / (ended - started) if ended > started else 0.0,
        percentile(times, 0.50),
        percentile(times, 0.95),
        percentile(times, 0.99),
    )


def percentile(times: dict[int, int], q: float) -> float:
    """Nearest-rank percentile of a {response time: count} histogram; NaN when empty."""
    rank = math.ceil(q * sum(times.values()))
    seen = 0
    for ms in sorted(times):
        seen += times[ms]
        if seen >= rank:
            return float(ms)
    return math.nan
