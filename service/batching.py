"""Dynamic micro-batching: concurrent requests for one model share one model call.

Requests queue their rows; a single asyncio task takes as many as fit in `max_batch_size`,
runs the model on them in the model's own worker thread (so the event loop keeps serving),
and hands each request its slice of the result. While the model is busy the next batch fills
by itself; when it is idle, a batch waits at most `max_wait_s`, and only for requests the
routes have announced as on their way (`expecting`), so a lone request never waits.

Each request names the predictor (model version) it was prepared for, and a batch only joins
requests for the same one, so a hot swap never mixes versions or input sizes: requests
already under way finish on the old version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.predictor import Predictor

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More rows are waiting than the queue bound allows; the caller should retry later."""


class Closed(Exception):
    """The batcher is shutting down and takes no more work."""


class Crashed(Closed):
    """The batcher stopped on an unexpected error; its owner starts a new one, so retry."""


@dataclass
class _Job:
    rows: np.ndarray
    predictor: Predictor
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    arrived: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class MicroBatcher:
    """Batches the model calls of one model's requests."""

    def __init__(
        self,
        name: str,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_size: int,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        on_error: Callable[[], None] = lambda: None,
        on_load: Callable[[int, int], None] = lambda queued, computing: None,
    ):
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_size = max_queue_size
        self.queued = 0  # rows waiting, not counting the batch being computed
        self._on_batch = on_batch
        self._on_error = on_error
        # Told the rows waiting and the rows being computed whenever either changes, so gauges
        # hold the current values themselves (service/metrics.py says why that matters).
        self._on_load = on_load
        self._jobs: deque[_Job] = deque()
        self._expected = 0
        self._arrived = asyncio.Event()
        self._closing = False
        self._running: list[_Job] = []  # the batch in the model's hands
        self.crashed: BaseException | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self.task = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{name}")

    @contextlib.contextmanager
    def expecting(self):
        """Announce a request that will submit soon (its body is being read or decoded), so an
        idle model may wait up to `max_wait_s` for it instead of running a smaller batch."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            self._arrived.set()

    @property
    def idle(self) -> bool:
        """No request is on its way (`expecting`), waiting or being computed."""
        return not (self._expected or self._jobs or self._running)

    async def predict(self, rows: np.ndarray, predictor: Predictor) -> dict[str, np.ndarray]:
        """`predictor`'s outputs for `rows` (at most `max_batch_size` of them)."""
        if len(rows) > self.max_batch_size:
            raise ValueError(f"{len(rows)} rows; at most {self.max_batch_size} per request")
        if self.crashed is not None:
            raise Crashed(f"model {self.name}'s batcher stopped unexpectedly; retry")
        if self._closing:
            raise Closed(f"model {self.name} is shutting down")
        if self.queued + len(rows) > self.max_queue_size:
            raise QueueFull(f"model {self.name} has {self.queued} rows waiting")
        job = _Job(rows, predictor)
        self._jobs.append(job)
        self.queued += len(rows)
        self._report_load()
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        """Finish the queued work, then stop."""
        self._closing = True
        self._arrived.set()
        await asyncio.wait([self.task])  # a crash is its owner's to report (see _serve)
        self._thread.shutdown()

    async def _serve(self) -> None:
        """Serve batches until closed; if that ever fails unexpectedly, fail every request held
        (rather than leave them waiting forever) and end with the error, for the owner's
        done-callback to see (`ModelRegistry` starts a new batcher)."""
        try:
            await self._serve_batches()
        except BaseException as error:
            self.crashed = error
            failure = Crashed(f"model {self.name}'s batcher stopped unexpectedly; retry")
            for job in [*self._running, *self._jobs]:
                if not job.future.done():
                    job.future.set_exception(failure)
            self._jobs.clear()
            self.queued, self._running = 0, []
            self._report_load()
            self._thread.shutdown(wait=False)
            raise

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._jobs or not self._closing:
            if not self._jobs:
                await self._wait_for_arrival()
                continue
            # Jobs that queued while the model was busy have waited enough already.
            await self._gather_company(self._jobs[0].arrived + self.max_wait_s)
            jobs = self._running = self._take_batch()
            self._report_load()
            try:
                outputs = await loop.run_in_executor(self._thread, self._run, jobs)
            except Exception as error:  # a failed batch fails its requests, not the batcher
                self._running = []
                self._report_load()
                log.exception("model %s failed on a batch of %d requests", self.name, len(jobs))
                self._on_error()
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            start = 0
            for job in jobs:
                end = start + len(job.rows)
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(_rows(outputs, start, end))
                start = end
            self._running = []
            self._report_load()

    def _report_load(self) -> None:
        self._on_load(self.queued, sum(len(job.rows) for job in self._running))

    async def _wait_for_arrival(self, timeout: float | None = None) -> None:
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    async def _gather_company(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while self._expected and self.queued < self.max_batch_size and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_for_arrival(remaining)

    def _take_batch(self) -> list[_Job]:
        jobs, rows = [], 0
        predictor = self._jobs[0].predictor
        while (
            self._jobs
            and self._jobs[0].predictor is predictor
            and rows + len(self._jobs[0].rows) <= self.max_batch_size
        ):
            job = self._jobs.popleft()
            jobs.append(job)
            rows += len(job.rows)
        self.queued -= rows
        return jobs

    def _run(self, jobs: list[_Job]) -> dict[str, np.ndarray]:
        rows = jobs[0].rows if len(jobs) == 1 else np.concatenate([job.rows for job in jobs])
        started = time.perf_counter()
        outputs = jobs[0].predictor.predict(rows)
        self._on_batch(len(rows), time.perf_counter() - started)
        return outputs


def _rows(outputs, start: int, end: int):
    """One request's rows of a batch's outputs (arrays by name; a bare array as it is)."""
    if isinstance(outputs, dict):
        return {name: values[start:end] for name, values in outputs.items()}
    return outputs[start:end]
