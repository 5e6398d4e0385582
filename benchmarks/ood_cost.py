"""What the out-of-distribution score costs per image: the exported signature of a version with
the score (`ood_score` beside `probabilities`) against the version it was made from, on the same
random images, called directly in this process.

    python -m benchmarks.ood_cost models/cifar10/4 models/cifar10/5 [--rounds 7] [--seconds 2]

The two are timed in alternation, A B A B ... (the CPU is shared, so a slow spell hits both),
and the median of the per-round ratios is the answer: the score's share of the model's cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.export import load_metadata


def per_image_seconds(signature, images: tf.Tensor, seconds: float) -> float:
    """Seconds per image over about `seconds` of calls (outputs fetched to host memory)."""
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for value in signature(image=images).values():
            value.numpy()
        calls += 1
    return elapsed / (calls * int(images.shape[0]))


def compare(without: Path, with_score: Path, batch: int, rounds: int, seconds: float) -> dict:
    signatures = [
        tf.saved_model.load(str(v)).signatures[load_metadata(v)["signature"]] for v in (without, with_score)
    ]
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    for signature in signatures:  # tracing and allocation are start-up costs
        signature(image=images)
    ratios, timings = [], []
    for _ in range(rounds):
        base, scored = (per_image_seconds(s, images, seconds) for s in signatures)
        ratios.append(scored / base)
        timings.append((base, scored))
    return {
        "batch": batch,
        "median_ratio": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "base_ms_per_image": round(1000 * statistics.median(t[0] for t in timings), 3),
        "scored_ms_per_image": round(1000 * statistics.median(t[1] for t in timings), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ood_cost", description=__doc__)
    parser.add_argument("without", type=Path, help="the version without the score")
    parser.add_argument("with_score", type=Path, help="the version with it")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    for batch in args.batches:
        result = compare(args.without, args.with_score, batch, args.rounds, args.seconds)
        extra = result["median_ratio"] - 1
        print(
            f"batch {batch}: {result['base_ms_per_image']} ms/image without the score, "
            f"{result['scored_ms_per_image']} with it: {extra:+.1%} (median of rounds {result['ratios']})"
        )


if __name__ == "__main__":
    main()
