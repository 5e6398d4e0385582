"""The data plane's own decisions, which no door shows in its answers: where an upload is
decoded, and what its decode budget publishes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from deployments import samples, serving, value

from service import dataplane


@pytest.mark.parametrize(
    "files, on_the_loop",
    [
        ([16 * 1024], [True]),
        ([16 * 1024 + 1], [False]),
        ([100, 100], [False, False]),  # several files: decoded side by side on the decoder threads
    ],
)
def test_a_single_file_of_up_to_16_kib_is_decoded_on_the_event_loop_the_rest_on_decoder_threads(
    shared_models, monkeypatch, files, on_the_loop
):
    where = []

    def decode_image(data, size, build=True, **limits):
        try:
            asyncio.get_running_loop()
            where.append(True)
        except RuntimeError:  # no event loop in this thread: a decoder thread
            where.append(False)
        return np.zeros((size[1], size[0], 3), np.uint8)

    monkeypatch.setattr(dataplane, "decode_image", decode_image)
    with serving(shared_models) as client:
        uploads = [("file", (f"{i}.png", bytes(length))) for i, length in enumerate(files)]
        assert client.post("/predict/image", files=uploads).status_code == 200
    assert where == on_the_loop


def test_the_decode_budget_and_what_decodes_hold_of_it_are_published(shared_models):
    with serving(shared_models, decode_budget_mb=96) as client:
        budget = client.app.state.dataplane.decode_budget
        with budget.holding(5 * 2**20):  # a decode in progress
            during = samples(client)
        after = samples(client)
    assert value(during, "decode_budget_bytes") == value(after, "decode_budget_bytes") == 96 * 2**20
    assert value(during, "decode_budget_bytes_in_use") == 5 * 2**20
    assert value(after, "decode_budget_bytes_in_use") == 0
