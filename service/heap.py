"""Keeping what was imported out of Python's full garbage collections.

Once TensorFlow and the app are imported, a worker holds some 432,000 objects the cyclic
collector tracks (TensorFlow's modules, functions and classes); a loaded model version adds
only about 4,500 (the shipped cifar10 and iris together 8,700). A full collection walks every
tracked object: 0.43 s with the imports tracked, stopping the event loop each time, a few times
a minute under load (that was the service's p99 at 32 and 64 clients: gc callbacks under
locust, 64 clients, 32 px: 2 full passes in 8 s, 1.0 s in all, longest 516 ms; 2026-12-02).
The imports live as long as the process, so they are moved once, before any model loads, to
the collector's permanent generation (`gc.freeze`), which no pass walks: full passes then take
about 3 ms with both models loaded.

The model versions themselves are left to the collector: a replaced or vanished version's
reference cycles are reclaimed by its ordinary passes, and nothing has to run after a load.
(Freezing each version as it loaded, as this module once did, needed a full pass before each
freeze to reclaim the version replaced: 0.24-0.37 s on the event loop at every reload, and a
thread would not help, since a collection holds the GIL.) Measured on this machine, Python
3.11, 2026-12-07: `python benchmarks/gc_pause.py`.
"""

from __future__ import annotations

import gc


def freeze_imports() -> None:
    """Collect once, then exempt every object alive from later collections. Call once, after
    the imports and before any model loads (anything alive now lives as long as the process)."""
    gc.collect()
    gc.freeze()
