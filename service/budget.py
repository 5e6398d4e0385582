"""What decoding uploads may cost: memory per worker, pixels (CPU) per request.

A file's pixels and the bytes its decoding will hold are known from its header, before any
decoding (`service.images.decoding_cost`). Each worker has one memory budget that its decoder
threads share: a file is decoded only once its bytes fit beside those being decoded, waiting
up to `wait_s` for them (else DecoderBusy, a 503), and a file that could never fit is refused
(ImageTooLarge, a 413, naming the budget). Each request may decode at most `max_pixels` in all,
which bounds its CPU time. So a worker's decoding holds at most `capacity` bytes at once and
the service at most `workers × capacity` beyond its idle size (docs/operating/security.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

MIB = 1024 * 1024


class DecoderBusy(Exception):
    """The worker's decode budget stayed taken by other uploads for too long: try again."""


class BudgetExceeded(ValueError):
    """More than a budget allows, whatever else is running: a 413."""


class DecodeBudget:
    """One worker's decode budget: `capacity` bytes of decoded pixels at once, shared by its
    decoder threads, and at most `max_request_pixels` decoded per request."""

    def __init__(
        self,
        capacity: int,
        wait_s: float,
        max_request_pixels: int,
        in_use: Gauge | None = None,
        budget: Gauge | None = None,
    ):
        self.capacity = capacity
        self.wait_s = wait_s
        self.max_request_pixels = max_request_pixels
        self.taken = 0
        self._change = threading.Condition()
        # The pod-wide decode-budget signals (service/metrics.py), kept as `taken` changes.
        self._in_use = in_use
        if budget is not None:
            budget.set(capacity)

    def for_request(self) -> RequestBudget:
        return RequestBudget(self)

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """`size` bytes of the budget, held for the block; waits up to `wait_s` for them."""
        if size > self.capacity:
            raise BudgetExceeded(
                f"decoding it takes about {size / MIB:.0f} MiB, more than the decode budget of"
                f" {self.capacity / MIB:.0f} MiB per worker (DECODE_BUDGET_MB)"
            )
        with self._change:
            if not self._change.wait_for(lambda: self.taken + size <= self.capacity, self.wait_s):
                raise DecoderBusy("the server is busy decoding other uploads; retry shortly")
            self._take(size)
        try:
            yield
        finally:
            with self._change:
                self._take(-size)
                self._change.notify_all()

    def _take(self, size: int) -> None:
        self.taken += size
        if self._in_use is not None:
            self._in_use.set(self.taken)


class RequestBudget:
    """The pixels one request may still decode, and its worker's shared memory budget."""

    def __init__(self, worker: DecodeBudget):
        self.worker = worker
        self.pixels_left = worker.max_request_pixels
        self._lock = threading.Lock()

    @contextmanager
    def holding(self, pixels: int, size: int) -> Iterator[None]:
        """Counts `pixels` against the request, then holds `size` bytes of the worker's budget."""
        with self._lock:
            if pixels > self.pixels_left:
                limit = self.worker.max_request_pixels
                raise BudgetExceeded(
                    f"the request's images hold more than the {limit:,} pixels one request may"
                    " decode (MAX_REQUEST_PIXELS)"
                )
            self.pixels_left -= pixels
        with self.worker.holding(size):
            yield
