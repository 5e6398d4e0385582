"""Keeping loaded models out of Python's full garbage collections.

Once TensorFlow and the models are loaded, a worker holds some 440,000 objects the cyclic
collector tracks (TensorFlow's modules, functions, graphs, the SavedModels' trackables). Its full
passes walk every one of them, stopping the event loop for 150-500 ms each, a few times a minute
under load: that was the service's p99 at 32 and 64 clients (gc callbacks under locust, 64
clients, 32 px: 2 full passes in 8 s, 1.0 s in all, longest 516 ms; 2026-12-02). What is alive
once a version is loaded lives about as long as the version, so it is moved to the collector's
permanent generation (`gc.freeze`), which no pass walks. Reference counting still frees it; and
before each freeze everything is unfrozen and collected once, so a replaced version's reference
cycles are reclaimed rather than kept forever.
"""

from __future__ import annotations

import gc


def freeze_loaded_models() -> None:
    """Collect everything once, then exempt what survives from later collections. Call after a
    model version is loaded or replaced (one full pass then, instead of one every few seconds)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
