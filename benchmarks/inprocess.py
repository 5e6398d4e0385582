"""The model's own speed, with no HTTP in the way: examples per second through the exported
`serving_default` signature, called directly in this process at a few batch sizes. The
largest batch gives "the ceiling" that a server on this machine can approach but not pass.
`runtime_throughput` measures any runtime the service can serve it with (service/runtimes.py):
`python -m benchmarks.fastpath inprocess` gives both, the SavedModel and its fast form."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.export import existing_versions, load_metadata


def latest_version(model_dir: Path, name: str) -> Path:
    versions = existing_versions(model_dir / name)
    if not versions:
        raise FileNotFoundError(f"no versions of {name!r} under {model_dir}")
    return model_dir / name / str(versions[-1])


def signature_throughput(version_dir: Path, batch_sizes: list[int], seconds: float) -> dict[int, float]:
    """Examples per second at each batch size, each measured for about `seconds` on one fixed
    random batch after a warm-up call (tracing and allocation are start-up costs)."""
    metadata = load_metadata(version_dir)
    spec = metadata["input"]
    signature = tf.saved_model.load(str(version_dir)).signatures[metadata["signature"]]
    rng = np.random.default_rng(0)
    rates = {}
    for batch in batch_sizes:
        shape = [batch, *spec["shape"][1:]]
        if spec["dtype"] == "uint8":
            x = tf.constant(rng.integers(0, 256, shape, dtype=np.uint8))
        else:
            x = tf.constant(rng.normal(4, 2, shape).astype(spec["dtype"]))
        signature(**{spec["name"]: x})["probabilities"].numpy()
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            # .numpy() because a server must have the result in host memory to answer.
            signature(**{spec["name"]: x})["probabilities"].numpy()
            calls += 1
        rates[batch] = calls * batch / elapsed
    return rates


def runtime_throughput(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_sizes: list[int], seconds: float
) -> dict[int, float]:
    """Examples per second of `predict` (a runtime as the service's model thread calls it, e.g.
    `Predictor.predict`) at each batch size, on real `images`, after one unmeasured call."""
    rates = {}
    for batch in batch_sizes:
        x = images[:batch]
        predict(x)
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            predict(x)
            calls += 1
        rates[batch] = calls * batch / elapsed
    return rates
