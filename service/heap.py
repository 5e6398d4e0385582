"""Keeping what was imported out of Python's full garbage collections.

Once TensorFlow and the app are imported, a worker holds hundreds of thousands of objects the
cyclic collector tracks (TensorFlow's modules, functions and classes); a loaded model version
adds only thousands. A full collection walks every tracked object, stopping the event loop for
hundreds of milliseconds each time, a few times a minute under load: that was the service's p99.
The imports live as long as the process, so they are moved once, before any model loads, to
the collector's permanent generation (`gc.freeze`), which no pass walks: full passes then take
milliseconds.

The model versions themselves are left to the collector: a replaced or vanished version's
reference cycles are reclaimed by its ordinary passes, and nothing has to run after a load.
(Freezing each version as it loaded, as this module once did, needed a full pass before each
freeze to reclaim the version replaced, on the event loop at every reload; a thread would not
help, since a collection holds the GIL.) The figures: benchmarks/results/gc_pause.md, measured
with `python -m benchmarks.gc_pause`.
"""

from __future__ import annotations

import gc


def freeze_imports() -> None:
    """Collect once, then exempt every object alive from later collections. Call once, after
    the imports and before any model loads (anything alive now lives as long as the process)."""
    gc.collect()
    gc.freeze()
