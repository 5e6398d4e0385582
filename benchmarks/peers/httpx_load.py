"""The plain client: `concurrency` asyncio tasks on one httpx.AsyncClient, each posting the
payload's JPEGs in turn for `seconds`; prints JSON with every latency and each error.

    python -m benchmarks.peers.httpx_load URL PAYLOAD_DIR CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

import httpx


def is_prediction(body: object) -> bool:
    """The service's answer, `{"label": ..., ...}`, or BentoML's for a batchable API: a list of
    exactly one such answer (its HTTP API is batch in, batch out)."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    return isinstance(body, dict) and "label" in body


async def drive(url: str, files: list[tuple[str, bytes]], concurrency: int, seconds: float) -> dict:
    latencies_ms: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        started = time.monotonic()
        deadline = started + seconds

        async def user(offset: int) -> None:
            for name, content in itertools.islice(itertools.cycle(files), offset, None):
                if time.monotonic() >= deadline:
                    return
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/predict/image", files={"file": (name, content, "image/jpeg")}
                    )
                    ok = response.status_code == 200 and is_prediction(response.json())
                    error = None if ok else f"HTTP {response.status_code}: {response.text[:120]}"
                except (httpx.HTTPError, ValueError) as failure:
                    error = f"{type(failure).__name__}: {failure}"
                if error:
                    errors.append(error)
                else:
                    latencies_ms.append(1000 * (time.monotonic() - sent))

        await asyncio.gather(*(user(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"elapsed_s": elapsed, "latencies_ms": latencies_ms, "errors": errors}


def main() -> None:
    url, folder, concurrency, seconds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    files = [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]
    print(json.dumps(asyncio.run(drive(url, files, concurrency, seconds))))


if __name__ == "__main__":
    main()
