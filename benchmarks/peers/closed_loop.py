"""What both asyncio load generators (httpx_load, grpc_load) do with their clients: each one
sends the payloads in turn, starting at its own offset, and waits for each answer before the
next, until the time is up."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def closed_loop(
    clients: list[Any], payloads: list[Any], call: Callable[[Any, Any], Awaitable[str | None]], seconds: float
) -> dict:
    """`call(client, payload)` answers None for a good answer, else the error's text; each
    client (an async context manager, closed at the end) runs on its own. The JSON the
    generators print: every good answer's latency and each error."""
    latencies_ms: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    deadline = started + seconds

    async def user(client: Any, offset: int) -> None:
        async with client:
            for payload in itertools.islice(itertools.cycle(payloads), offset, None):
                if time.monotonic() >= deadline:
                    return
                sent = time.monotonic()
                error = await call(client, payload)
                if error:
                    errors.append(error)
                else:
                    latencies_ms.append(1000 * (time.monotonic() - sent))

    await asyncio.gather(*(user(client, i) for i, client in enumerate(clients)))
    return {"elapsed_s": time.monotonic() - started, "latencies_ms": latencies_ms, "errors": errors}
