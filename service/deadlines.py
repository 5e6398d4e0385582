"""A request's deadline: when its client wants the answer by, or gives up.

Each door notes when a request comes in and the deadline it states; the data plane hands the
deadline to the batcher, which refuses what cannot be answered by then and drops from its
queue what was not (service/batching.py):
- HTTP: the `Request-Timeout` header, in seconds (`stated_deadline`, a dependency of every
  inference route); a v2 request may also state Triton's `timeout` parameter, in microseconds;
- gRPC: the call's own deadline (service/protocols/grpc_server.py), and v2's `timeout` too.
When a request states several, the earliest counts; when it states none, it gets
REQUEST_TIMEOUT_S from when it came in: for HTTP, when the last byte of its body did
(service/middleware.py), so that a client on a slow network is not refused for the time its upload
took; a stated deadline is the client's own clock, upload included.

Both are context variables because every request runs in a task of its own (uvicorn's per
request, grpc.aio's per call) with its own copy of the context: the code between where a
request comes in and the data plane need not carry them.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Annotated

from fastapi import Header

from service.faults import CodecError

HEADER = "Request-Timeout"
_arrived: ContextVar[float | None] = ContextVar("arrived", default=None)
_stated: ContextVar[float | None] = ContextVar("stated", default=None)


def arrived() -> None:
    """The request comes in now: a default deadline counts from here."""
    _arrived.set(asyncio.get_running_loop().time())


def answer_within(seconds: float) -> None:
    """The request's client waits `seconds` from now, or less if it said so already."""
    deadline = asyncio.get_running_loop().time() + seconds
    stated = _stated.get()
    _stated.set(deadline if stated is None else min(stated, deadline))


def answer_within_microseconds(timeout: object) -> None:
    """Triton's `timeout` request parameter: whole microseconds; 0 (Triton's default) states none."""
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise CodecError(f"parameter 'timeout' must be whole microseconds, at least 0; got {timeout!r}")
    if timeout:
        answer_within(timeout / 1_000_000)


def deadline(default_s: float) -> float:
    """The request's deadline on the event loop's clock: the earliest it stated, else
    `default_s` after it came in (or after now, if no door noted when)."""
    stated = _stated.get()
    if stated is not None:
        return stated
    came_in = _arrived.get()
    return (asyncio.get_running_loop().time() if came_in is None else came_in) + default_s


RequestTimeout = Annotated[
    float | None,
    Header(
        alias=HEADER,
        gt=0,
        allow_inf_nan=False,
        description="seconds the client waits for the answer: a request the model cannot answer"
        " in time is refused at once (503, Retry-After) or dropped from the queue (504)."
        " Without it, the server's REQUEST_TIMEOUT_S applies.",
    ),
]


async def stated_deadline(timeout: RequestTimeout = None) -> None:
    """The request's arrival, and its `Request-Timeout` (async: see service/deps.py)."""
    arrived()
    if timeout is not None:
        answer_within(timeout)
