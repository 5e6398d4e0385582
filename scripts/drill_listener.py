"""Locust listener for scripts/fault-drill, loaded beside locustfile.py (`-f locustfile.py,this`):
counts the answers of each replica (X-Served-By), the seconds in which each answered and
the answers of each CIFAR-10 version, and writes them as
JSON to $DRILL_ANSWERS when the run ends."""

from __future__ import annotations

import collections
import json
import os
import time

from locust import events

replicas: collections.Counter[str] = collections.Counter()
versions: collections.Counter[str] = collections.Counter()
seconds: collections.defaultdict[str, set[int]] = collections.defaultdict(set)  # when each answered


@events.request.add_listener
def count_answer(name, response, exception, **_kwargs) -> None:
    if response is None or not getattr(response, "headers", None):
        return
    served_by = response.headers.get("X-Served-By", "none")
    replicas[served_by] += 1
    seconds[served_by].add(int(time.time()))
    if name == "/predict/image" and response.status_code == 200:
        versions[str(response.json().get("version"))] += 1


@events.quitting.add_listener
def write_answers(environment, **_kwargs) -> None:
    with open(os.environ["DRILL_ANSWERS"], "w") as out:
        answered = {replica: sorted(times) for replica, times in seconds.items()}
        json.dump({"replicas": replicas, "cifar10_versions": versions, "seconds": answered}, out)
