"""The model repository drill of issue 33: `python -m service` with its defaults, MODEL_DIR a
temporary copy of models/, POLL_INTERVAL_S=2, clients calling both models throughout, while
the repository changes under it:

1. an empty model folder appears, stays 3 scans, and goes;
2. a cifar10 version is written slowly: metadata.json first, the rest 4 s later;
3. that version is deleted (the previous one must answer again);
4. the iris folder is moved out of MODEL_DIR (iris must answer 404), then moved back.

    python -m benchmarks.repository_drill [--out reports/repository_drill]

It samples /readyz and /healthz (fresh connections, so every worker is asked) every 50 ms
from a process of its own (the clients' threads would hold its GIL and inflate the latencies),
and reports /healthz before the first change (the machine's own latency under this load) apart
from during the changes. It prints the figures and the checks, and writes them to
<out>/<UTC time>.json and .md. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from benchmarks.server import serve

ROOT = Path(__file__).resolve().parents[1]
POLL_INTERVAL_S = 2
SLOW_WRITE_S = 4  # between metadata.json and the rest of the export
SAMPLE_S = 0.05
SETTLE_S = 3 * POLL_INTERVAL_S  # how long a state is held before the next change
STEADY_S = 20  # under load, before the first change
LIMITS = {  # the "Done when"
    "served_after_slow_write_s": 40,
    "rolled_back_after_delete_s": 30,
    "iris_404_after_move_s": 30,
    "iris_served_after_return_s": 40,
    "healthz_p99_ms": 100,
    "healthz_max_ms": 300,
}
FEATURES = {"features": [5.1, 3.5, 1.4, 0.2]}


@dataclass
class Answer:
    at: float  # time.monotonic()
    status: int
    version: str | None


@dataclass
class Traffic:
    """Every answer each client got, and each probe's samples, while the drill runs."""

    cifar10: list[Answer] = field(default_factory=list)
    iris: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def call(client: httpx.Client, request) -> Answer:
    try:
        response = request(client)
        version = response.json().get("version") if response.status_code == 200 else None
        return Answer(time.monotonic(), response.status_code, version)
    except httpx.HTTPError:
        return Answer(time.monotonic(), 0, None)  # no answer at all: a failure too


def keep_calling(url: str, answers: list[Answer], request, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            answers.append(call(client, request))


def keep_probing(url: str, stop, samples) -> None:
    """In a process of its own until `stop` is set: (time, /readyz status, /healthz ms) into
    `samples`, every SAMPLE_S."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            healthz = httpx.get(f"{url}/healthz", timeout=10)  # a fresh connection: any worker
            healthz_ms = 1000 * (time.perf_counter() - started)
            healthz.raise_for_status()
            samples.put((time.monotonic(), httpx.get(f"{url}/readyz", timeout=10).status_code, healthz_ms))
        except httpx.HTTPError:
            samples.put((time.monotonic(), 0, None))
        time.sleep(SAMPLE_S)


def settled_after(answers: list[Answer], since: float, good) -> float | None:
    """Seconds from `since` until every answer was `good` (the first of the last run of good
    answers), or None if the last answer was not."""
    after = sorted((a for a in answers if a.at >= since), key=lambda a: a.at)  # two clients' answers
    if not after or not good(after[-1]):
        return None
    first = len(after)
    while first > 0 and good(after[first - 1]):
        first -= 1
    return after[first].at - since


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def drill(models: Path, away: Path, url: str, traffic: Traffic) -> dict:
    figures: dict = {}

    def live(name: str) -> str | None:
        listed = {m["name"]: m for m in httpx.get(f"{url}/models", timeout=10).json()["models"]}
        return listed[name]["live_version"] if name in listed else None

    # 1. An empty model folder appears and goes.
    (models / "newcomer").mkdir()
    time.sleep(SETTLE_S)
    (models / "newcomer").rmdir()
    time.sleep(SETTLE_S)

    # 2. A cifar10 version written slowly, in place: metadata.json first, the rest later.
    source, version = models / "cifar10" / "4", models / "cifar10" / "5"
    (version / "assets.extra").mkdir(parents=True)
    shutil.copy(source / "assets.extra" / "metadata.json", version / "assets.extra")
    time.sleep(SLOW_WRITE_S)
    shutil.copytree(source, version, dirs_exist_ok=True)
    last_file = time.monotonic()
    wait_until(lambda: (settled_after(traffic.cifar10, last_file, lambda a: a.version == "5") or 0) > 0, 60)
    time.sleep(SETTLE_S)
    figures["served_after_slow_write_s"] = settled_after(
        traffic.cifar10, last_file, lambda a: a.version == "5"
    )

    # 3. That version deleted: the previous one answers again.
    shutil.rmtree(version)
    deleted = time.monotonic()
    wait_until(lambda: (settled_after(traffic.cifar10, deleted, lambda a: a.version == "4") or 0) > 0, 60)
    time.sleep(SETTLE_S)
    figures["rolled_back_after_delete_s"] = settled_after(
        traffic.cifar10, deleted, lambda a: a.version == "4"
    )

    # 4. iris moved away, then back.
    (models / "iris").rename(away / "iris")
    moved = time.monotonic()
    wait_until(lambda: (settled_after(traffic.iris, moved, lambda a: a.status == 404) or 0) > 0, 60)
    time.sleep(SETTLE_S)
    figures["iris_404_after_move_s"] = settled_after(traffic.iris, moved, lambda a: a.status == 404)
    (away / "iris").rename(models / "iris")
    returned = time.monotonic()
    wait_until(lambda: (settled_after(traffic.iris, returned, lambda a: a.status == 200) or 0) > 0, 60)
    time.sleep(SETTLE_S)
    figures["iris_served_after_return_s"] = settled_after(traffic.iris, returned, lambda a: a.status == 200)
    figures["live_at_end"] = {"cifar10": live("cifar10"), "iris": live("iris")}
    figures["iris_window"] = (moved, returned)
    return figures


def run(out: Path) -> int:
    image = (ROOT / "samples" / "cat.jpg").read_bytes()
    traffic = Traffic()
    with tempfile.TemporaryDirectory(prefix="repository-drill-") as scratch:
        models, away = Path(scratch) / "models", Path(scratch) / "away"
        shutil.copytree(ROOT / "models", models)
        away.mkdir()
        settings = {"POLL_INTERVAL_S": str(POLL_INTERVAL_S), "ACCESS_LOG": "false"}
        with serve("service", models, Path(scratch) / "server.log", settings=settings) as running:
            clients = [
                threading.Thread(
                    target=keep_calling,
                    args=(
                        running.url,
                        traffic.cifar10,
                        lambda c: c.post("/predict/image", files={"file": image}),
                        traffic.stop,
                    ),
                )
                for _ in range(2)
            ]
            clients.append(
                threading.Thread(
                    target=keep_calling,
                    args=(
                        running.url,
                        traffic.iris,
                        lambda c: c.post("/predict/iris", json=FEATURES),
                        traffic.stop,
                    ),
                )
            )
            stop_probing, samples = multiprocessing.Event(), multiprocessing.Queue()
            probe = multiprocessing.Process(target=keep_probing, args=(running.url, stop_probing, samples))
            probe.start()
            for thread in clients:
                thread.start()
            started = time.monotonic()
            try:
                time.sleep(STEADY_S)
                first_change = time.monotonic()
                figures = drill(models, away, running.url, traffic)
            finally:
                traffic.stop.set()
                stop_probing.set()
                probed = []
                while probe.is_alive() or not samples.empty():
                    with contextlib.suppress(queue.Empty):
                        probed.append(samples.get(timeout=0.5))
                probe.join()
                for thread in clients:
                    thread.join()
            duration = time.monotonic() - started
            log = (Path(scratch) / "server.log").read_text(errors="replace")
    moved, returned = figures.pop("iris_window")
    steady = np.array([ms for at, _, ms in probed if ms is not None and at < first_change])
    changing = np.array([ms for at, _, ms in probed if ms is not None and at >= first_change])
    iris_outside = [
        a for a in traffic.iris if not moved <= a.at <= returned + figures["iris_served_after_return_s"]
    ]
    figures |= {
        "duration_s": round(duration, 1),
        "cifar10_requests": len(traffic.cifar10),
        "cifar10_failed": sum(a.status != 200 for a in traffic.cifar10),
        "cifar10_versions": sorted({a.version for a in traffic.cifar10 if a.version}),
        "iris_requests": len(traffic.iris),
        "iris_failed_outside_its_absence": sum(a.status != 200 for a in iris_outside),
        "readyz_samples": len(probed),
        "readyz_not_200": sum(status != 200 for _, status, _ in probed),
        "healthz_steady_samples": len(steady),
        "healthz_steady_p50_ms": round(float(np.percentile(steady, 50)), 1),
        "healthz_steady_p99_ms": round(float(np.percentile(steady, 99)), 1),
        "healthz_steady_max_ms": round(float(steady.max()), 1),
        "healthz_samples": len(changing),
        "healthz_p50_ms": round(float(np.percentile(changing, 50)), 1),
        "healthz_p99_ms": round(float(np.percentile(changing, 99)), 1),
        "healthz_max_ms": round(float(changing.max()), 1),
        "server_tracebacks": log.count("Traceback"),
    }
    for key in (
        "served_after_slow_write_s",
        "rolled_back_after_delete_s",
        "iris_404_after_move_s",
        "iris_served_after_return_s",
    ):
        figures[key] = None if figures[key] is None else round(figures[key], 1)
    checks = {
        "readyz 200 at every sample": figures["readyz_not_200"] == 0,
        "0 failed cifar10 requests": figures["cifar10_failed"] == 0,
        "0 failed iris requests while it was there": figures["iris_failed_outside_its_absence"] == 0,
        **{
            f"{key} <= {limit}": figures[key] is not None and figures[key] <= limit
            for key, limit in LIMITS.items()
        },
        "back on cifar10 v4 and iris v2": figures["live_at_end"] == {"cifar10": "4", "iris": "2"},
    }
    report = {
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "figures": figures,
        "checks": checks,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Model repository drill",
        "",
        f"`python -m benchmarks.repository_drill`, {report['measured']}: `python -m service` defaults,",
        f"POLL_INTERVAL_S={POLL_INTERVAL_S}, 2 cifar10 clients and 1 iris client throughout;",
        f"healthz_steady: the {STEADY_S} s under load before the first change, healthz: during the changes.",
        "",
        "| figure | value |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in figures.items()],
        "",
        "| check | passed |",
        "| --- | --- |",
        *[f"| {check} | {'yes' if passed else 'NO'} |" for check, passed in checks.items()],
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {stem}.json, {stem}.md")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "repository_drill")
    raise SystemExit(run(parser.parse_args().out))
