"""Locust users for the peers benchmark: each posts the JPEGs in $PEERS_PAYLOAD_DIR in turn to
/predict/image as a multipart `file`, the service's request, and counts a 200 as a success only
when it carries a prediction."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from locust import FastHttpUser, constant, events, task

from benchmarks.peers.httpx_load import is_prediction
from locustfile import multipart  # the repository root's

BODIES = [
    multipart("file", path.name, path.read_bytes(), "image/jpeg")
    for path in sorted(Path(os.environ["PEERS_PAYLOAD_DIR"]).glob("*.jpg"))
]


class PeerUser(FastHttpUser):
    wait_time = constant(0)  # closed loop: N users keep N requests in flight
    network_timeout = connection_timeout = 60.0

    def on_start(self) -> None:
        self.bodies = itertools.cycle(BODIES)

    @task
    def predict_image(self) -> None:
        body, content_type = next(self.bodies)
        with self.client.post(
            "/predict/image", data=body, headers={"Content-Type": content_type}, catch_response=True
        ) as response:
            check(response)


def check(response) -> None:
    if response.status_code == 0:  # no HTTP answer at all: refused, reset, timed out
        response.failure(response.error)
    elif response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
    else:
        try:
            answered = is_prediction(response.json())
        except ValueError:
            answered = False
        if not answered:
            response.failure(f"not a prediction: {response.text[:200]}")


@events.quitting.add_listener
def fail_on_errors(environment, **_kwargs) -> None:
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
