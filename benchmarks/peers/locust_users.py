"""Locust users for the peers benchmark: each posts the JPEGs in $PEERS_PAYLOAD_DIR in turn to
/predict/image as a multipart `file`, the service's request, and counts a 200 as a success only
when it carries a prediction (the repository locustfile's check)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from locust import FastHttpUser, constant, events, task

from locustfile import check_predictions, multipart  # the repository root's

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
            check_predictions(response)


@events.quitting.add_listener
def fail_on_errors(environment, **_kwargs) -> None:
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
