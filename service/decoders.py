"""The worker's decoder threads, as a stage a request waits in: how many files they have been
handed and how fast they have been getting through them.

Under overload the decoders, not the model, can be what a request waits for longest (their
threads run at a lower priority than the event loop: service/app.py): a queue that admits by the
model's wait alone then takes requests it cannot answer in time. `backlog_s` is the decoders'
share of a request's expected wait (DataPlane.expecting adds it to the model's).

A request's files go to the threads as one run per thread, not one task per file: for a small
file, handing it to a thread and back costs as much as decoding it. A run stops at the next file
once its request's caller has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from service.batching import ServiceRate


class Decoders:
    """`threads` decoder threads with a measured rate (seconds per file)."""

    def __init__(
        self,
        threads: int,
        initializer: Callable[[], None] | None = None,
        on_load: Callable[[int], None] = lambda files: None,
    ):
        self.threads = threads
        self.rate = ServiceRate()
        self.files = 0  # handed to the threads and not yet decoded (nor cancelled)
        self._on_load = on_load  # told `files` whenever it changes (a gauge)
        self._recent: deque[int] = deque(maxlen=9)  # the last requests' numbers of files
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=initializer)

    def backlog_s(self) -> float:
        """Seconds until the threads are through the files handed to them, at the recent rate."""
        return self.rate.seconds_for(self.files) / self.threads

    def request_s(self) -> float:
        """Seconds a request's own files take, if it brings as many as the recent requests did
        (the median of the last 9)."""
        files = statistics.median_low(self._recent) if self._recent else 0
        return self.rate.seconds_for(files) / self.threads

    async def map(self, decode: Callable[[Any], Any], files: Sequence[Any]) -> list:
        """`decode(file)` for each of `files`, or the exception it raised, in order."""
        loop = asyncio.get_running_loop()
        self._recent.append(len(files))
        size = math.ceil(len(files) / self.threads)
        runs = [files[start : start + size] for start in range(0, len(files), size)]
        gone = threading.Event()  # the request's caller stopped waiting: its runs stop
        futures = []
        for run in runs:
            future = self._pool.submit(_decode_run, decode, run, gone)
            self.files += len(run)
            self._on_load(self.files)
            # On the event loop, whichever thread ends it: a run decoded, failed, or cancelled
            # before it started (its request gone).
            future.add_done_callback(functools.partial(_on_loop, loop, self._finished, len(run)))
            futures.append(future)
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))
        except asyncio.CancelledError:
            gone.set()
            raise
        return [outcome for decoded, _ in results for outcome in decoded]

    def shutdown(self) -> None:
        self._pool.shutdown()

    def _finished(self, files: int, future: Future) -> None:
        self.files -= files
        self._on_load(self.files)
        if not future.cancelled() and future.exception() is None:
            decoded, seconds = future.result()
            if decoded:
                self.rate.record(len(decoded), seconds)


def _decode_run(
    decode: Callable[[Any], Any], files: Sequence[Any], gone: threading.Event
) -> tuple[list, float]:
    """Each file's decoding or the exception it raised, and the seconds the run took; cut short
    once the request is `gone`."""
    started = time.perf_counter()
    outcomes: list = []
    for file in files:
        if gone.is_set():
            break
        try:
            outcomes.append(decode(file))
        except Exception as error:  # the caller reports the first, numbered
            outcomes.append(error)
    return outcomes, time.perf_counter() - started


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody counts any more
        loop.call_soon_threadsafe(callback, *args)
