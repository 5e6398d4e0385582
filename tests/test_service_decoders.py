"""The decoders are a stage a request waits in: they know how many files they have been handed
and how fast they get through them, and a request they could not reach by its deadline is
refused before its body is read, as one the model could not."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from deployments import serving
from payloads import GOOD_FEATURES, GOOD_IMAGE

from service.decoders import Decoders

FLOWER = GOOD_FEATURES["features"]


def test_a_requests_files_come_back_in_order_each_decoded_or_with_its_own_error():
    def decode(file: int) -> int:
        if file == 3:
            raise ValueError("three")
        return file * 10

    async def run():
        decoders = Decoders(2)
        try:
            return await decoders.map(decode, list(range(7)))
        finally:
            decoders.shutdown()

    outcomes = asyncio.run(run())
    shown = [str(o) if isinstance(o, Exception) else o for o in outcomes]
    assert shown == [0, 10, 20, "three", 40, 50, 60]


def test_a_requests_files_go_to_the_threads_as_one_run_per_thread():
    threads_used: list[str] = []

    def decode(file: int) -> int:
        threads_used.append(threading.current_thread().name)
        return file

    async def run():
        decoders = Decoders(2)
        handed = []
        original = decoders._pool.submit
        decoders._pool.submit = lambda *args: handed.append(len(args[2])) or original(*args)
        try:
            await decoders.map(decode, list(range(16)))
        finally:
            decoders.shutdown()
        return handed

    assert asyncio.run(run()) == [8, 8]  # two tasks for the pool, not sixteen


def test_the_backlog_is_the_files_handed_and_not_yet_decoded_at_the_measured_rate():
    release = threading.Event()
    told: list[int] = []

    def decode(file: int) -> int:
        release.wait(10)
        return file

    async def run():
        decoders = Decoders(2, on_load=told.append)
        decoders.rate.record(4, 2.0)  # lately half a second a file
        decoders.rate.record(4, 2.0)
        request = asyncio.ensure_future(decoders.map(decode, list(range(8))))
        await asyncio.sleep(0.05)
        waiting = decoders.files, decoders.backlog_s()
        release.set()
        await request
        await asyncio.sleep(0.05)  # the runs' ends reach the event loop
        decoders.shutdown()
        return waiting, decoders.files

    (files, backlog_s), files_after = asyncio.run(run())
    assert files == 8 == told[1]
    assert backlog_s == pytest.approx(8 * 0.5 / 2)  # two threads
    assert files_after == 0 == told[-1]  # as a gauge would have it


def test_a_request_whose_caller_is_gone_leaves_the_backlog_with_its_runs_not_yet_started():
    release = threading.Event()

    def decode(file: int) -> int:
        release.wait(10)
        return file

    async def run():
        decoders = Decoders(1)
        first = asyncio.ensure_future(decoders.map(decode, [1]))  # holds the only thread
        second = asyncio.ensure_future(decoders.map(decode, [2, 3, 4]))
        await asyncio.sleep(0.05)
        before = decoders.files
        second.cancel()
        await asyncio.sleep(0.05)
        after = decoders.files
        release.set()
        await first
        decoders.shutdown()
        return before, after

    assert asyncio.run(run()) == (4, 1)


def test_a_run_under_way_stops_at_the_next_file_once_its_caller_is_gone():
    started, release, decoded = threading.Event(), threading.Event(), []

    def decode(file: int) -> int:
        started.set()
        release.wait(10)
        decoded.append(file)
        return file

    async def run():
        decoders = Decoders(1)
        request = asyncio.ensure_future(decoders.map(decode, [1, 2, 3, 4]))
        await asyncio.to_thread(started.wait, 10)  # the run is on its first file
        request.cancel()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.to_thread(decoders.shutdown)
        return decoders.files

    assert asyncio.run(run()) == 0
    assert decoded == [1]


def upload(client, timeout_s: str):
    return client.post(
        "/predict/image/cifar10",
        files={"file": ("a.png", GOOD_IMAGE)},
        headers={"Request-Timeout": timeout_s},
    )


@contextlib.contextmanager
def another_request_decoding(client, files: list[int]):
    """Another request's `files` on the decoder threads until the block ends."""
    release = threading.Event()

    def held(file: int) -> int:
        release.wait(30)
        return file

    busy = client.portal.start_task_soon(client.app.state.decoders.map, held, files)
    try:
        yield
    finally:
        release.set()
    busy.result(30)


def test_an_image_request_the_decoders_cannot_reach_by_its_deadline_is_refused_before_its_body_is_read(
    shared_models,
):
    with serving(shared_models) as client:
        for _ in range(9):  # as if a file had lately taken 10 s to decode
            client.app.state.decoders.rate.record(1, 10.0)
        # A file on each thread: 10 s of decoding ahead of anything else.
        with another_request_decoding(client, [1, 2]):
            response = upload(client, "5")
            # Iris's requests are not decoded: the decoders' backlog is not theirs to wait for.
            flower = client.post(
                "/v2/models/iris/infer",
                json={"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": FLOWER}]},
                headers={"Request-Timeout": "5"},
            )
            metrics = client.get("/metrics").text
        patient = upload(client, "60")
    assert response.status_code == 503
    assert "after the request's deadline" in response.json()["detail"]
    assert 8 <= int(response.headers["Retry-After"]) <= 10
    assert flower.status_code == 200
    assert "\ndecode_files_waiting 2.0\n" in metrics  # the other request's, held
    assert patient.status_code == 200


def test_an_image_request_counts_its_own_files_as_many_as_the_recent_requests_brought(shared_models):
    with serving(shared_models) as client:
        decoders = client.app.state.decoders
        for _ in range(3):  # the recent requests brought 16 files each
            client.portal.call(decoders.map, lambda file: file, list(range(16)))
        for _ in range(9):  # and a file has lately taken a second to decode
            decoders.rate.record(1, 1.0)
        with another_request_decoding(client, [1, 2]):  # a second ahead
            # 1 s ahead and 8 s of its own (16 files on two threads): past its 5 s.
            response = upload(client, "5")
        # With nothing ahead of it, the same request is taken: the estimate may be wrong.
        alone = upload(client, "5")
    assert response.status_code == 503
    assert "would answer in about 9.00 s" in response.json()["detail"]
    assert alone.status_code == 200
    assert response.headers["Retry-After"] == "1"  # when the work ahead of it is done


def test_the_rate_is_the_seconds_per_file_of_each_run_timed_in_its_thread(monkeypatch):
    clock = iter(range(0, 1000, 6))  # every reading of the clock 6 s after the last
    monkeypatch.setattr("service.decoders.time.perf_counter", lambda: next(clock))

    async def run():
        decoders = Decoders(1)
        await decoders.map(lambda file: file, [1, 2, 3])  # one run: 6 s for 3 files
        await decoders.map(lambda file: file, [1, 2, 3])
        decoders.shutdown()
        return decoders.rate.seconds_for(1)

    assert asyncio.run(run()) == 2.0


def test_a_run_that_never_started_teaches_the_rate_nothing_and_raises_nothing():
    release, errors = threading.Event(), []

    async def run():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        decoders = Decoders(1)
        first = asyncio.ensure_future(decoders.map(lambda file: release.wait(10), [1]))
        second = asyncio.ensure_future(decoders.map(lambda file: file, [2]))
        await asyncio.sleep(0.05)
        second.cancel()  # before it started: its run is cancelled
        await asyncio.sleep(0.05)
        release.set()
        await first
        await asyncio.to_thread(decoders.shutdown)
        await asyncio.sleep(0.05)
        return decoders.rate._per_row

    recorded = asyncio.run(run())
    assert len(recorded) == 1  # the first run only
    assert errors == []


def test_a_requests_own_files_are_counted_as_the_median_of_the_last_nine_requests():
    async def run():
        decoders = Decoders(1)
        for _ in range(9):
            decoders.rate.record(1, 1.0)
        estimates = [decoders.request_s()]  # no request yet: nothing to count
        for files in [1, 16, 16, 16, 16, 16, 1, 1, 1, 1]:  # the first falls out of the nine
            await decoders.map(lambda file: file, list(range(files)))
        for _ in range(9):
            decoders.rate.record(1, 1.0)
        estimates.append(decoders.request_s())
        decoders.shutdown()
        return estimates

    assert asyncio.run(run()) == [0.0, 16.0]
