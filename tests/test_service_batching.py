"""Micro-batching: concurrent requests share model calls, and get what they would alone."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from deployments import serving
from payloads import png
from payloads import random_images as images

from service.batching import Closed, Crashed, DeadlineExceeded, MicroBatcher, QueueFull, ServiceRate


class FakePredictor:
    """Doubles its input, remembers batch sizes and when each call came (the event loop's clock:
    `time.monotonic`), and can be held to let requests pile up."""

    def __init__(self):
        self.batches: list[int] = []
        self.called_at: list[float] = []
        self.returned = 0
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.called_at.append(time.monotonic())
        self.gate.wait(5)
        self.returned += 1
        self.batches.append(len(batch))
        if (batch < 0).any():
            raise ValueError("negative input")
        return batch * 2


def run(coroutine):
    """Run a scenario; an error the event loop was left to report (a callback's, a task's
    nobody awaited) fails it too: the batcher's own callbacks must never raise."""
    errors = []

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        return await coroutine

    result = asyncio.run(scenario())
    assert errors == []
    return result


def behind_a_busy_model(
    max_batch_size: int, requests: list[np.ndarray], model: type[FakePredictor] = FakePredictor
) -> tuple[list[int], list]:
    """The rows of each model call, and each answer, when `requests` queue while the model
    computes a first one-row request (whose answer comes first)."""

    async def scenario():
        predictor = model()
        batcher = MicroBatcher("fake", max_batch_size=max_batch_size, max_wait_s=0, max_queue_size=100)
        predictor.gate.clear()
        busy = asyncio.create_task(batcher.predict(np.array([[0.0]]), predictor))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher.predict(rows, predictor)) for rows in requests]
        await asyncio.sleep(0.05)
        predictor.gate.set()
        results = await asyncio.gather(busy, *queued)
        await batcher.close()
        return predictor.batches, results

    return run(scenario())


def test_concurrent_requests_share_a_call_and_get_their_own_rows():
    batches, results = behind_a_busy_model(8, [np.array([[i], [i + 0.5]]) for i in range(1, 10)])
    assert batches == [1, 8, 8, 2]  # nine 2-row requests after the first, at most 8 rows a call
    assert results[0].tolist() == [[0.0]]
    for i, result in enumerate(results[1:], 1):
        assert result.tolist() == [[2 * i], [2 * i + 1]]


# Tests of what a batch does not wait for allow company an hour (max_wait_s=3600): a batch
# that waited would time out, however fast or slow the machine, rather than pass a bound.


def test_an_idle_model_waits_only_for_announced_requests():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", max_batch_size=8, max_wait_s=3600, max_queue_size=100)
        await asyncio.wait_for(batcher.predict(np.array([[1.0]]), predictor), 10)  # nobody announced: at once

        async def announced_late():
            with batcher.expecting():
                await asyncio.sleep(0.1)  # reading and decoding its upload
            return await batcher.predict(np.array([[2.0]]), predictor)

        try:
            late = asyncio.create_task(announced_late())
            await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(batcher.predict(np.array([[3.0]]), predictor), late), 10)
            # The announcement ended with its request: nobody is waited for any more.
            await asyncio.wait_for(batcher.predict(np.array([[4.0]]), predictor), 10)
        finally:
            await batcher.close()
        return predictor.batches

    assert run(scenario()) == [1, 2, 1]  # the second call waited for the announced request


def test_an_idle_model_waits_for_an_announced_request_for_max_wait_s_and_no_longer():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", max_batch_size=8, max_wait_s=0.5, max_queue_size=100)
        with batcher.expecting():  # an upload that never finishes while this runs
            arrived = asyncio.get_running_loop().time()
            await asyncio.wait_for(batcher.predict(np.array([[1.0]]), predictor), 5)
        await batcher.close()
        return predictor.called_at[0] - arrived

    # From the request's arrival to the model call, in the batcher's clock: at least max_wait_s
    # exactly, and not a second max_wait_s more.
    assert 0.5 <= run(scenario()) < 1.0


def test_a_full_batch_does_not_wait_for_announced_requests():
    async def scenario():
        batcher = MicroBatcher("fake", max_batch_size=8, max_wait_s=3600, max_queue_size=100)
        try:
            with batcher.expecting():
                answer = await asyncio.wait_for(batcher.predict(np.ones((8, 1)), FakePredictor()), 10)
        finally:
            await batcher.close()
        return answer.tolist()

    assert run(scenario()) == [[2.0]] * 8  # not after the hour an announced request may be waited for


def test_a_batcher_cancelled_during_a_model_call_fails_its_requests_at_once():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", 8, 0, 100)
        predictor.gate.clear()  # the model call outlasts the batcher (up to FakePredictor's 5 s)
        held = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor))
        await asyncio.sleep(0.05)
        batcher.task.cancel()
        with pytest.raises(Crashed):
            await held
        returned_before = predictor.returned
        predictor.gate.set()
        return returned_before

    assert run(scenario()) == 0  # failed while the model thread still held it: not waited for


def test_requests_queued_behind_a_busy_model_wait_for_company_from_the_oldest_ones_arrival():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", max_batch_size=8, max_wait_s=0.5, max_queue_size=100)
        predictor.gate.clear()
        busy = asyncio.create_task(batcher.predict(np.array([[0.0]]), predictor))
        await asyncio.sleep(0.05)
        with batcher.expecting():  # an upload that never finishes while this runs
            clock = asyncio.get_running_loop().time
            oldest_came = clock()
            oldest = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor))
            await asyncio.sleep(0.4)
            newer_came = clock()
            newer = asyncio.create_task(batcher.predict(np.array([[2.0]]), predictor))
            await asyncio.sleep(0.05)
            predictor.gate.set()  # the model is free: the queued two may wait for the announced one
            await asyncio.gather(busy, oldest, newer)
        await batcher.close()
        return predictor.called_at[1], oldest_came, newer_came, predictor.batches

    called, oldest_came, newer_came, batches = run(scenario())
    assert batches == [1, 2]
    # In the batcher's clock: until the oldest request's max_wait_s, and before the newer one's
    # (0.4 s later) would have ended.
    assert oldest_came + 0.5 <= called < newer_came + 0.5


def test_a_batch_never_holds_more_than_max_batch_size_rows_and_keeps_request_order():
    batches, results = behind_a_busy_model(4, [np.full((rows, 1), float(rows)) for rows in (2, 3, 1)])
    assert batches == [1, 2, 4]  # 2 + 3 rows would be 5
    assert [r.tolist() for r in results[1:]] == [[[4.0]] * 2, [[6.0]] * 3, [[2.0]]]


class ScoringPredictor(FakePredictor):
    """Answers two outputs by name, as a model with an out-of-distribution score does."""

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": super().predict(batch), "ood_score": batch[:, 0] + 100}


def test_each_request_gets_its_own_rows_of_every_output():
    requests = [np.array([[i], [i + 0.5]]) for i in (1, 2)]
    batches, (_, first, second) = behind_a_busy_model(8, requests, model=ScoringPredictor)
    assert batches == [1, 4]  # the two queued requests shared one call
    assert first["probabilities"].tolist() == [[2.0], [3.0]] and first["ood_score"].tolist() == [101.0, 101.5]
    assert second["probabilities"].tolist() == [[4.0], [5.0]]
    assert second["ood_score"].tolist() == [102.0, 102.5]


def test_the_batch_metrics_get_each_calls_rows_and_seconds():
    async def scenario():
        batches: list[tuple[int, float]] = []
        batcher = MicroBatcher(
            "fake", 8, 0, 100, on_batch=lambda rows, seconds: batches.append((rows, seconds))
        )
        started = time.perf_counter()
        await batcher.predict(np.array([[1.0], [2.0], [3.0]]), FakePredictor())
        elapsed = time.perf_counter() - started
        await batcher.close()
        return batches, elapsed

    batches, elapsed = run(scenario())
    assert len(batches) == 1 and batches[0][0] == 3 and 0 <= batches[0][1] <= elapsed


def test_a_crashed_batcher_fails_every_request_it_holds_reports_nothing_held_and_refuses_more():
    async def scenario():
        predictor, loads = FakePredictor(), []
        batcher = MicroBatcher(
            "fake", 8, 0, 100, on_load=lambda queued, computing: loads.append((queued, computing))
        )
        predictor.gate.clear()
        busy = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.predict(np.array([[2.0], [3.0]]), predictor))
        await asyncio.sleep(0)

        def a_bug():
            raise RuntimeError("a bug in the batcher")

        batcher._take_batch = a_bug  # the next batch is never taken
        predictor.gate.set()
        first = await busy
        with pytest.raises(Crashed, match="stopped unexpectedly; retry"):
            await asyncio.wait_for(queued, 5)
        await asyncio.wait([batcher.task])
        with pytest.raises(Crashed):
            await batcher.predict(np.array([[4.0]]), predictor)
        return first, loads, batcher

    first, loads, batcher = run(scenario())
    assert first.tolist() == [[2.0]]
    assert loads[-1] == (0, 0)
    assert isinstance(batcher.crashed, RuntimeError) and batcher.task.exception() is batcher.crashed


def test_requests_for_different_versions_never_share_a_call():
    async def scenario():
        old, new = FakePredictor(), FakePredictor()
        batcher = MicroBatcher("fake", max_batch_size=8, max_wait_s=0, max_queue_size=100)
        old.gate.clear()
        busy = asyncio.create_task(batcher.predict(np.array([[0.0]]), old))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher.predict(np.array([[1.0]]), p)) for p in (old, old, new, new)]
        await asyncio.sleep(0.05)
        old.gate.set()
        await asyncio.gather(busy, *queued)
        await batcher.close()
        return old.batches, new.batches

    assert run(scenario()) == ([1, 2], [2])


def test_a_failing_batch_fails_its_requests_only():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", max_batch_size=8, max_wait_s=0, max_queue_size=100)
        with pytest.raises(ValueError, match="negative"):
            await batcher.predict(np.array([[-1.0]]), predictor)
        result = await batcher.predict(np.array([[1.0]]), predictor)
        await batcher.close()
        return result

    assert run(scenario()).tolist() == [[2.0]]


def test_queue_bound_and_close_drains_then_refuses():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", max_batch_size=2, max_wait_s=0, max_queue_size=2)
        predictor.gate.clear()
        busy = asyncio.create_task(batcher.predict(np.array([[1.0], [1.0]]), predictor))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.predict(np.array([[2.0], [2.0]]), predictor))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.predict(np.array([[3.0]]), predictor)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(Closed):
            await batcher.predict(np.array([[4.0]]), predictor)
        predictor.gate.set()
        await closing
        return (await busy).tolist(), (await waiting).tolist()

    assert run(scenario()) == ([[2.0], [2.0]], [[4.0], [4.0]])  # queued work finished before closing


def batch_size_samples(client, model: str) -> tuple[float, float]:
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        for stat in ("count", "sum"):
            if line.startswith(f'model_batch_size_{stat}{{model="{model}"}}'):
                values[stat] = float(line.split()[-1])
    return values["count"], values["sum"]


def test_concurrent_http_requests_are_batched_and_match_single_requests(shared_models, monkeypatch):
    pixels = images(24, seed=5)
    with serving(shared_models) as client:
        alone = [
            client.post("/predict/image", files={"file": png(p)}).json()["probabilities"] for p in pixels
        ]
        count_before, rows_before = batch_size_samples(client, "cifar10")
        assert rows_before == count_before  # so far one image per model call

        # Hold the first model call until the others have queued, so they must share calls.
        served = client.app.state.registry.models["cifar10"]
        compute = served.predictor.predict

        def held(batch):
            monkeypatch.setattr(served.predictor, "predict", compute)  # only the first call waits
            deadline = time.monotonic() + 10
            while served.batcher.queued < 16 and time.monotonic() < deadline:
                time.sleep(0.005)
            return compute(batch)

        monkeypatch.setattr(served.predictor, "predict", held)
        with ThreadPoolExecutor(24) as pool:
            together = list(pool.map(lambda p: client.post("/predict/image", files={"file": png(p)}), pixels))
        assert all(r.status_code == 200 for r in together)
        for single, batched in zip(alone, together, strict=True):
            assert np.allclose(
                list(single.values()), list(batched.json()["probabilities"].values()), atol=1e-5
            )
        count, rows = batch_size_samples(client, "cifar10")
        assert rows - rows_before == 24
        assert count - count_before < 24  # some calls carried several requests


def test_concurrent_feature_requests_match_single_requests(client):
    rng = np.random.default_rng(9)
    rows = rng.uniform(0, 8, (40, 4)).round(2).tolist()
    alone = [client.post("/predict/iris", json={"features": r}).json() for r in rows]
    with ThreadPoolExecutor(20) as pool:
        together = list(pool.map(lambda r: client.post("/predict/iris", json={"features": r}).json(), rows))
    for single, batched in zip(alone, together, strict=True):
        assert np.allclose(
            list(single["probabilities"].values()), list(batched["probabilities"].values()), atol=1e-5
        )


def test_a_request_larger_than_a_batch_is_refused():
    async def scenario():
        batcher = MicroBatcher("fake", max_batch_size=2, max_wait_s=0, max_queue_size=10)
        with pytest.raises(ValueError, match="at most 2"):
            await batcher.predict(np.zeros((3, 1)), FakePredictor())
        await batcher.close()

    run(scenario())


# --- deadlines, callers that leave, admission by expected wait --------------------------------


async def until(condition, timeout: float = 5.0) -> None:
    """Let the event loop run until `condition()` holds (fail after `timeout` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def a_busy_model(batcher: MicroBatcher, predictor: FakePredictor) -> asyncio.Task:
    """A one-row request in the model's hands, held there until `predictor.gate` is set."""
    predictor.gate.clear()
    busy = asyncio.create_task(batcher.predict(np.array([[0.0]]), predictor))
    await until(lambda: batcher.computing == 1)
    return busy


def test_a_batcher_is_idle_only_with_no_request_announced_queued_or_computed():
    """What a retired version's batcher waits for before it closes (service/registry.py)."""

    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", 8, 0, 100)
        states = [batcher.idle]
        with batcher.expecting():
            states.append(batcher.idle)  # a body still coming in
        busy = await a_busy_model(batcher, predictor)
        states.append(batcher.idle)  # computed
        queued = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor))
        await until(lambda: batcher.queued == 1)
        states.append(batcher.idle)  # computed and queued
        predictor.gate.set()
        await asyncio.gather(busy, queued)
        states.append(batcher.idle)
        await batcher.close()
        return states

    assert run(scenario()) == [True, False, False, False, True]


def test_a_request_still_queued_at_its_deadline_is_dropped_and_never_computed():
    async def scenario():
        predictor, loads = FakePredictor(), []
        batcher = MicroBatcher("fake", 8, 0, 100, on_load=lambda queued, computing: loads.append(queued))
        busy = await a_busy_model(batcher, predictor)
        deadline = asyncio.get_running_loop().time() + 0.2
        with pytest.raises(DeadlineExceeded, match="could not answer before the request's deadline"):
            await batcher.predict(np.array([[1.0]]), predictor, deadline)
        held_still, queued_after = batcher.computing == 1, batcher.queued
        predictor.gate.set()
        await busy
        await batcher.close()
        return held_still, queued_after, loads, predictor.batches

    held_still, queued_after, loads, batches = run(scenario())
    assert held_still  # dropped at its deadline, not when the model was free again
    assert queued_after == 0 and loads[-1] == 0
    assert batches == [1]  # the expired row never reached the model


def test_a_caller_that_stops_waiting_takes_its_rows_out_of_the_queue_at_once():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", 8, 0, 100)
        busy = await a_busy_model(batcher, predictor)
        # Behind another request: the queue finds it as itself, not by comparing rows.
        staying = asyncio.create_task(batcher.predict(np.array([[3.0]]), predictor))
        leaving = asyncio.create_task(batcher.predict(np.array([[1.0], [2.0]]), predictor))
        await until(lambda: batcher.queued == 3)
        leaving.cancel()  # what grpc.aio does to a cancelled call, and service.middleware to a gone client
        await until(lambda: batcher.queued == 1)
        predictor.gate.set()
        await busy
        answer = await staying
        await batcher.close()
        return predictor.batches, answer.tolist()

    batches, answer = run(scenario())
    assert batches == [1, 1]  # the cancelled request's two rows were never computed
    assert answer == [[6.0]]


def measured(batcher: MicroBatcher, seconds_per_row: float) -> None:
    """As if the model had taken `seconds_per_row` a row on its last calls."""
    for _ in range(9):
        batcher.rate.record(10, 10 * seconds_per_row)


def test_a_request_that_could_not_be_answered_by_its_deadline_is_refused_with_when_to_retry():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", 8, 0, 100)
        measured(batcher, 2.0)  # the busy one-row call should take 2 s; each queued row, 2 s more
        busy = await a_busy_model(batcher, predictor)
        now = asyncio.get_running_loop().time()
        with pytest.raises(QueueFull, match="after the request's deadline") as too_soon:
            await batcher.predict(np.array([[1.0]]), predictor, now + 3.0)  # would be done in about 4 s
        # Refused when announced, before its body is read: 2 s of work ahead.
        with pytest.raises(QueueFull) as announced, batcher.expecting(now + 1.0):
            pass
        patient = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor, now + 60))
        await until(lambda: batcher.queued == 1)
        with pytest.raises(QueueFull) as behind_more:
            await batcher.predict(np.array([[1.0]]), predictor, now + 5.0)  # about 6 s now
        predictor.gate.set()
        await asyncio.gather(busy, patient)
        await batcher.close()
        return too_soon.value, announced.value, behind_more.value, predictor.batches

    too_soon, announced, behind_more, batches = run(scenario())
    assert "after the request's deadline (3.00 s)" in str(too_soon)  # the seconds it had left
    assert too_soon.retry_after_s == 2 and announced.retry_after_s == 2  # the busy call's 2 s
    assert behind_more.retry_after_s == 4  # and the patient request's row
    assert batches == [1, 1]  # the refused rows never queued


def test_a_request_with_nothing_ahead_is_taken_whatever_the_estimate():
    async def scenario():
        batcher = MicroBatcher("fake", 8, 0, 100)
        measured(batcher, 2.0)
        now = asyncio.get_running_loop().time()
        answer = await batcher.predict(np.array([[1.0]]), FakePredictor(), now + 0.5)
        await batcher.close()
        return answer.tolist()

    assert run(scenario()) == [[2.0]]


def test_a_batch_ends_before_a_request_it_would_make_late():
    def batches_with_rate_now(seconds_per_row: float) -> list[int]:
        async def scenario():
            predictor = FakePredictor()
            batcher = MicroBatcher("fake", 8, 0, 100)
            measured(batcher, 1.0)
            busy = await a_busy_model(batcher, predictor)
            now = asyncio.get_running_loop().time()
            first = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor, now + 60))
            second = asyncio.create_task(batcher.predict(np.array([[2.0]]), predictor, now + 60))
            await until(lambda: batcher.queued == 2)  # admitted: done in about 3 s at 1 s a row
            measured(batcher, seconds_per_row)  # then the model slows down
            predictor.gate.set()
            await asyncio.gather(busy, first, second)
            await batcher.close()
            return predictor.batches

        return run(scenario())

    assert batches_with_rate_now(1.0) == [1, 2]
    assert batches_with_rate_now(40.0) == [1, 1, 1]  # two rows together: 80 s, past the deadline


def test_the_rate_is_the_first_calls_then_at_least_the_slower_of_two_then_the_upper_quartile_of_nine():
    rate = ServiceRate()
    assert rate.seconds_for(4) == 0.0  # nothing measured yet
    rate.record(10, 5.0)
    assert rate.seconds_for(4) == 2.0  # 0.5 s a row
    rate.record(1, 1.5)
    assert rate.seconds_for(1) >= 1.5  # cautious: not the first call's 0.5 s alone
    rate.record(1, 100.0)  # pushed out by the nine calls after it
    for seconds in range(1, 10):
        rate.record(2, 2.0 * seconds)  # 1 to 9 s a row
    assert rate.seconds_for(2) == 2 * 7.5  # the upper quartile of 1..9


class Clock:
    """The running event loop's clock, held still and moved by hand: nothing depends on how fast
    the machine runs, and boundaries can be met exactly (timers fire only once it is moved)."""

    def __init__(self, at: float = 1000.0):
        self.now = at
        asyncio.get_running_loop().time = lambda: self.now


async def held(condition, timeout: float = 5.0) -> None:
    """`until`, for a held clock: yields to the event loop without sleeping on its clock."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0)


def test_a_request_due_now_is_late_and_one_expected_exactly_at_its_deadline_is_taken():
    async def scenario():
        clock = Clock()
        batcher = MicroBatcher("fake", 8, 0, 100)
        with pytest.raises(DeadlineExceeded), batcher.expecting(clock.now):
            pass
        # Half a second of decoding ahead of it, nothing else: done at its deadline exactly.
        with batcher.expecting(clock.now + 0.5, ahead_s=0.5):
            pass
        with pytest.raises(QueueFull) as refused, batcher.expecting(clock.now + 0.25, ahead_s=0.5):
            pass
        measured(batcher, 1.0)  # its own rows are counted once they come, not when announced
        with batcher.expecting(clock.now + 0.5, ahead_s=0.5):
            pass
        await batcher.close()
        return refused.value

    assert run(scenario()).retry_after_s == 1  # at least a second, though the wait ahead is less


async def busy_on_a_held_clock() -> tuple[Clock, FakePredictor, MicroBatcher, asyncio.Task]:
    """A batcher whose model lately took 1 s a row, computing a one-row request held by
    `predictor.gate`, on a held clock."""
    clock, predictor = Clock(), FakePredictor()
    batcher = MicroBatcher("fake", 8, 0, 100)
    measured(batcher, 1.0)
    predictor.gate.clear()
    busy = asyncio.create_task(batcher.predict(np.array([[0.0]]), predictor))
    await held(lambda: batcher.computing == 1)
    return clock, predictor, batcher, busy


def test_a_model_past_its_expected_time_counts_as_finishing_now_not_as_time_in_hand():
    async def scenario():
        clock, predictor, batcher, busy = await busy_on_a_held_clock()  # expected to take a second
        clock.now += 1.5  # and still computing half a second later
        with pytest.raises(QueueFull) as refused, batcher.expecting(clock.now + 0.5, own_s=0.75):
            pass  # its own decoding alone would make it late
        predictor.gate.set()
        await busy
        await batcher.close()
        return refused.value

    assert run(scenario()).retry_after_s == 1


def test_a_batch_takes_a_request_it_would_answer_exactly_at_its_deadline():
    async def scenario():
        clock, predictor, batcher, busy = await busy_on_a_held_clock()
        first = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor, clock.now + 10))
        second = asyncio.create_task(batcher.predict(np.array([[2.0]]), predictor, clock.now + 3))
        await held(lambda: batcher.queued == 2)
        clock.now += 1  # the busy call ends as expected; the two rows take 2 s: done at 3 s
        predictor.gate.set()
        await asyncio.gather(busy, first, second)
        await batcher.close()
        return predictor.batches

    assert run(scenario()) == [1, 2]


def test_the_batcher_serves_on_after_every_request_it_held_expired_while_it_waited_for_company():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", 8, max_wait_s=0.3, max_queue_size=100)
        now = asyncio.get_running_loop().time()
        with batcher.expecting(), pytest.raises(DeadlineExceeded):  # company the batcher waits for
            await batcher.predict(np.array([[1.0]]), predictor, now + 0.1)
        await asyncio.sleep(0.05)  # the batcher finds nothing left to take
        answer = await asyncio.wait_for(batcher.predict(np.array([[2.0]]), predictor), 5)
        await batcher.close()
        return answer.tolist(), predictor.batches

    assert run(scenario()) == ([[4.0]], [1])


def test_a_caller_that_leaves_long_before_its_deadline_leaves_nothing_of_its_request_held():
    async def scenario():
        predictor = FakePredictor()
        batcher = MicroBatcher("fake", 8, 0, 100)
        busy = await a_busy_model(batcher, predictor)
        rows = np.ones((2, 1))
        kept = weakref.ref(rows)
        leaving = asyncio.create_task(
            batcher.predict(rows, predictor, asyncio.get_running_loop().time() + 3600)
        )
        del rows
        await until(lambda: batcher.queued == 2)
        leaving.cancel()
        await asyncio.wait([leaving])
        del leaving
        gc.collect()
        freed = kept() is None  # not held by a timer until the deadline an hour away
        predictor.gate.set()
        await busy
        await batcher.close()
        return freed

    assert run(scenario())


def test_a_request_due_when_the_model_is_free_is_never_computed_even_before_its_timer_runs():
    """On a busy event loop the clock moves on while the batcher works: a request due by the time
    the model is free again is dropped when the next batch is taken, not computed because its
    timer has not run yet; the requests behind it still share one call."""

    async def scenario():
        clock = Clock()
        predictor = FakePredictor()
        due = clock.now + 1

        def on_load(queued: int, computing: int) -> None:
            if (queued, computing) == (3, 0):  # the busy call is done; the batcher takes the next
                clock.now = due  # in the same step, before any timer can run

        batcher = MicroBatcher("fake", 8, 0, 100, on_load=on_load)
        predictor.gate.clear()
        busy = asyncio.create_task(batcher.predict(np.array([[0.0]]), predictor))
        await held(lambda: batcher.computing == 1)
        first = asyncio.create_task(batcher.predict(np.array([[1.0]]), predictor, clock.now + 60))
        late = asyncio.create_task(batcher.predict(np.array([[2.0]]), predictor, due))
        last = asyncio.create_task(batcher.predict(np.array([[3.0]]), predictor, clock.now + 60))
        await held(lambda: batcher.queued == 3)
        predictor.gate.set()
        await asyncio.gather(busy, first, last)
        with pytest.raises(DeadlineExceeded):
            await late
        await batcher.close()
        return predictor.batches

    assert run(scenario()) == [1, 2]  # the first and last together, the late one never
