"""The Python work of one /predict/image request, the model's own work left out: CPU
microseconds per request through the whole app (routing, multipart reading, decoding a 32x32
JPEG, the data plane's checks and batcher, the answer), in one event loop over ASGI with no
server or network, the model call replaced by a fixed answer. Compare two checkouts by running
it in each, one after the other, on the same machine:

    python -m benchmarks.route_overhead --requests 500 --rounds 7

It prints the fastest and the median round and writes them to
reports/route_overhead/<UTC time>.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


async def cpu_per_request(model_dir: Path, image: bytes, requests: int, rounds: int) -> list[float]:
    """CPU microseconds per request of each round, after a warm-up."""
    settings = Settings(model_dir=model_dir, poll_interval_s=0, workers=1, access_log=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        while not app.state.registry.ready:
            await asyncio.sleep(0.1)
        model = app.state.registry.image_model()
        answer = np.full((1, len(model.predictor.labels)), 1 / len(model.predictor.labels), np.float32)
        model.predictor.predict = lambda batch: np.repeat(answer, len(batch), 0)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://benchmark") as client:
            for _ in range(300):
                response = await client.post("/predict/image", files={"file": image})
                response.raise_for_status()
            results = []
            for _ in range(rounds):
                started = time.process_time()
                for _ in range(requests):
                    await client.post("/predict/image", files={"file": image})
                results.append((time.process_time() - started) / requests * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--image", type=Path, default=ROOT / "samples" / "cat.jpg")
    parser.add_argument("--out", type=Path, help="default: reports/route_overhead/<UTC time>.json")
    args = parser.parse_args()
    results = asyncio.run(cpu_per_request(args.models, args.image.read_bytes(), args.requests, args.rounds))
    fastest, median = min(results), sorted(results)[len(results) // 2]
    print(f"/predict/image: {fastest:.0f} us CPU per request fastest round, {median:.0f} us median")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out = args.out or ROOT / "reports" / "route_overhead" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"requests": args.requests, "rounds_us": results, "fastest_us": fastest, "median_us": median}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
