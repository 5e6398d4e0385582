"""The plain client: `concurrency` asyncio tasks, each a client of its own (an httpx.AsyncClient
with one keep-alive connection) posting the payload's JPEGs in turn for `seconds`; prints JSON
with every latency and each error.

One client each, as separate users would be, rather than one client's pool shared by all:
httpcore's pool checks every connection it holds (`has_expired`: a poll and a getpeername
system call each) whenever a request is assigned, so one pool of 32 connections spent 64% of
the generator's CPU there (py-spy, 2026-12-02), and at 64 connections it saturated its core at
about 95 requests/s whatever the server: every server measured the same. With a connection
per client that check is one connection long.

    python -m benchmarks.peers.httpx_load URL PAYLOAD_DIR CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

from benchmarks.peers.closed_loop import closed_loop


def is_prediction(body: object) -> bool:
    """The service's answer, `{"label": ..., ...}`, or BentoML's for a batchable API: a list of
    exactly one such answer (its HTTP API is batch in, batch out)."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    return isinstance(body, dict) and "label" in body


async def drive(url: str, files: list[tuple[str, bytes]], concurrency: int, seconds: float) -> dict:
    # Made before the clock starts: each client builds an SSL context (even for http://),
    # some 25 ms of CPU, which at 64 clients delayed the first requests by over a second.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60) for _ in range(concurrency)]

    async def post(client: httpx.AsyncClient, file: tuple[str, bytes]) -> str | None:
        name, content = file
        try:
            response = await client.post("/predict/image", files={"file": (name, content, "image/jpeg")})
            ok = response.status_code == 200 and is_prediction(response.json())
            return None if ok else f"HTTP {response.status_code}: {response.text[:120]}"
        except (httpx.HTTPError, ValueError) as failure:
            return f"{type(failure).__name__}: {failure}"

    return await closed_loop(clients, files, post, seconds)


def main() -> None:
    url, folder, concurrency, seconds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    files = [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]
    print(json.dumps(asyncio.run(drive(url, files, concurrency, seconds))))


if __name__ == "__main__":
    main()
