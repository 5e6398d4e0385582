"""Dynamic micro-batching: concurrent requests for one model share one model call.

Requests queue their rows; a single asyncio task takes as many as fit in `max_batch_size`,
runs the model on them in the model's own worker thread (so the event loop keeps serving),
and hands each request its slice of the result. While the model is busy the next batch fills
by itself; when it is idle, a batch waits at most `max_wait_s`, and only for requests the
routes have announced as on their way (`expecting`), so a lone request never waits.

Each request names the predictor (model version) it was prepared for, and a batch only joins
requests for the same one, so a hot swap never mixes versions or input sizes: requests
already under way finish on the old version.

Time: each request may carry a deadline (service/deadlines.py). It is admitted only if the
rows ahead of it and its own can be computed before then at the rate the model has been
computing lately (`ServiceRate`); otherwise QueueFull says when the rows ahead will be done.
A request still queued at its deadline is dropped with DeadlineExceeded, and one whose caller
stopped waiting (its awaiting task cancelled: a gRPC cancellation, an HTTP client gone) leaves
the queue at once: a batch only ever computes rows somebody waits for. Once in a batch, a
request is answered; its rows are being computed anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.predictor import Predictor

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue cannot take the request: too many rows waiting, or too much work ahead of it to
    finish before its deadline. The rows ahead should be done in `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before the model could take it."""


class Closed(Exception):
    """The batcher is shutting down and takes no more work."""


class Crashed(Closed):
    """The batcher stopped on an unexpected error; its owner starts a new one, so retry."""


class ServiceRate:
    """How fast the model has been computing lately: the upper quartile of the time per row of
    its last `batches` model calls, timed in the model's thread (not the event loop's wait to
    hear of it, which would count every other request's work too). Cautious, as an answer that
    comes after its client has gone is work lost while a refusal costs a retry (on a busy
    machine a call can take twice the median); yet a quartile, so that one slow call (a batch
    size traced for the first time, a pause of the machine) does not make the model look slow
    for the calls after it."""

    def __init__(self, batches: int = 9):
        self._per_row: deque[float] = deque(maxlen=batches)

    def record(self, rows: int, seconds: float) -> None:
        self._per_row.append(seconds / rows)

    def seconds_for(self, rows: int) -> float:
        """The time to compute `rows` at the recent rate; 0 before any call is measured."""
        if len(self._per_row) < 2:
            return rows * self._per_row[0] if self._per_row else 0.0
        return rows * statistics.quantiles(self._per_row, n=4)[-1]


# `eq=False`: a job is itself, found in the queue by identity (its rows are arrays).
@dataclass(eq=False)
class _Job:
    rows: np.ndarray
    predictor: Predictor
    deadline: float | None = None  # the event loop's clock
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    arrived: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    expiry: asyncio.TimerHandle | None = None
    queued: bool = True  # in the queue, not yet taken into a batch nor dropped


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
        self.rate = ServiceRate()
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
        self._busy_until = 0.0  # when the model should be done with it, at the recent rate
        self.crashed: BaseException | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self.task = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{name}")

    @contextlib.contextmanager
    def expecting(self, deadline: float | None = None, ahead_s: float = 0.0, own_s: float = 0.0):
        """Announce a request that will submit soon (its body is being read or decoded), so an
        idle model may wait up to `max_wait_s` for it instead of running a smaller batch. One
        that could not be answered by `deadline` even if it had no rows is refused here, as in
        `predict`, before its body is read or decoded: under overload, that work would be lost.
        Before it can submit it waits `ahead_s` for others' work (the decoders'), then `own_s`
        for its own."""
        self._admit(0, deadline, ahead_s, own_s)
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

    @property
    def computing(self) -> int:
        """Rows in the batch the model is computing."""
        return sum(len(job.rows) for job in self._running)

    async def predict(
        self, rows: np.ndarray, predictor: Predictor, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """`predictor`'s outputs for `rows` (at most `max_batch_size` of them), if the model can
        take them by `deadline` (the event loop's clock; None: no deadline)."""
        if len(rows) > self.max_batch_size:
            raise ValueError(f"{len(rows)} rows; at most {self.max_batch_size} per request")
        if self.crashed is not None:
            raise Crashed(f"model {self.name}'s batcher stopped unexpectedly; retry")
        if self._closing:
            raise Closed(f"model {self.name} is shutting down")
        self._admit(len(rows), deadline)
        loop = asyncio.get_running_loop()
        job = _Job(rows, predictor, deadline)
        self._jobs.append(job)
        self.queued += len(rows)
        # A caller that stops waiting cancels the future it awaits: its job leaves the queue.
        job.future.add_done_callback(lambda _: self._drop(job))
        if deadline is not None:
            job.expiry = loop.call_at(deadline, self._drop, job)
        self._report_load()
        self._arrived.set()
        return await job.future

    def _admit(self, rows: int, deadline: float | None, ahead_s: float = 0.0, own_s: float = 0.0) -> None:
        """Refuse what the queue cannot hold, or cannot answer by `deadline` at the recent rate,
        after `ahead_s` and `own_s` spent before it reaches the queue: the sooner a client hears
        it, the sooner it can retry elsewhere or later. A request with nothing ahead of it is
        always taken: it gets the model at once. Cautious, as the rate is: the waits are added,
        though the model works through its queue while the request waits for the decoders."""
        now = asyncio.get_running_loop().time()
        backlog = ahead_s + self._backlog_s(now)
        retry_after_s = max(1, math.ceil(backlog))
        if self.queued + rows > self.max_queue_size:
            raise QueueFull(f"model {self.name} has {self.queued} rows waiting", retry_after_s)
        if deadline is None:
            return
        if deadline <= now:
            raise DeadlineExceeded(f"the request's deadline passed before model {self.name} could take it")
        expected = backlog + own_s + self.rate.seconds_for(rows)
        if (self._jobs or self._running or ahead_s) and now + expected > deadline:
            raise QueueFull(
                f"model {self.name} would answer in about {expected:.2f} s, after the request's"
                f" deadline ({deadline - now:.2f} s); retry in {retry_after_s} s",
                retry_after_s,
            )

    def _backlog_s(self, now: float) -> float:
        """Seconds until the model is done with the batch it computes and the rows queued."""
        computing = max(0.0, self._busy_until - now) if self._running else 0.0
        return computing + self.rate.seconds_for(self.queued)

    def _drop(self, job: _Job) -> None:
        """Take `job` out of the queue if it is still there (its caller stopped waiting, or its
        deadline came) and, unless it is answered already, fail it with DeadlineExceeded."""
        if job.queued:
            job.queued = False
            self._jobs.remove(job)
            self.queued -= len(job.rows)
            self._report_load()
        if job.expiry is not None:
            job.expiry.cancel()
        if not job.future.done():
            job.future.set_exception(
                DeadlineExceeded(f"model {self.name} could not answer before the request's deadline")
            )

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
                job.queued = False  # leaving with the queue, cleared below
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
            if not jobs:  # every job waiting had expired, or its caller had gone
                continue
            self._report_load()
            started = loop.time()
            self._busy_until = started + self.rate.seconds_for(self.computing)
            try:
                outputs, seconds = await loop.run_in_executor(self._thread, self._run, jobs)
            except Exception as error:  # a failed batch fails its requests, not the batcher
                self._running = []
                self._report_load()
                log.exception("model %s failed on a batch of %d requests", self.name, len(jobs))
                self._on_error()
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.rate.record(sum(len(job.rows) for job in jobs), seconds)
            start = 0
            for job in jobs:
                end = start + len(job.rows)
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(_rows(outputs, start, end))
                start = end
            self._running = []
            self._report_load()

    def _report_load(self) -> None:
        self._on_load(self.queued, self.computing)

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
        """The oldest jobs for one predictor that fit in a batch and that it can answer by their
        deadlines at the recent rate: the batch ends before a job that would make it late (the
        first is always taken: the rate is an estimate). On the way, drop the jobs nobody waits
        for: whose caller has gone, or whose deadline has passed (their timers may not have run
        yet, on a busy event loop)."""
        now = asyncio.get_running_loop().time()
        jobs: list[_Job] = []
        rows, due = 0, math.inf  # the batch's rows, and its earliest deadline
        while self._jobs:
            job = self._jobs[0]
            deadline = math.inf if job.deadline is None else job.deadline
            if job.future.done() or deadline <= now:
                self._drop(job)
                continue
            fits = rows + len(job.rows) <= self.max_batch_size
            late = now + self.rate.seconds_for(rows + len(job.rows)) > min(due, deadline)
            if jobs and (job.predictor is not jobs[0].predictor or not fits or late):
                break
            due = min(due, deadline)
            self._jobs.popleft()
            job.queued = False
            if job.expiry is not None:  # in a batch, it is answered
                job.expiry.cancel()
            jobs.append(job)
            rows += len(job.rows)
        self.queued -= rows
        return jobs

    def _run(self, jobs: list[_Job]) -> tuple[dict[str, np.ndarray], float]:
        """The model's outputs for the batch, by name, and the seconds the model took."""
        rows = jobs[0].rows if len(jobs) == 1 else np.concatenate([job.rows for job in jobs])
        started = time.perf_counter()
        outputs = jobs[0].predictor.predict(rows)
        seconds = time.perf_counter() - started
        self._on_batch(len(rows), seconds)
        return outputs, seconds


def _rows(outputs, start: int, end: int):
    """One request's rows of a batch's outputs (arrays by name; a bare array as it is)."""
    if isinstance(outputs, dict):
        return {name: values[start:end] for name, values in outputs.items()}
    return outputs[start:end]
