"""What a full garbage collection costs a worker, with and without the imports frozen
(service/heap.py): tracked objects and the seconds of one full pass, after importing the app
and after loading the shipped models, in a fresh process each way:

    python -m benchmarks.gc_pause

Each full pass holds the GIL, so the event loop stops for as long as it takes.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = [ROOT / "models" / "cifar10" / "4", ROOT / "models" / "iris" / "2"]


def full_pass() -> str:
    started = time.perf_counter()
    gc.collect()
    return f"{len(gc.get_objects()):7d} tracked, full pass {1000 * (time.perf_counter() - started):6.1f} ms"


def measure(freeze: bool) -> None:
    """In this process: import, maybe freeze, load the shipped models, print each stage."""
    from service.app import create_app  # noqa: F401, PLC0415  (TensorFlow and the whole app)
    from service.heap import freeze_imports  # noqa: PLC0415
    from service.predictor import load_predictor  # noqa: PLC0415

    label = "imports frozen" if freeze else "nothing frozen"
    print(f"{label}, after the imports:      {full_pass()}")
    if freeze:
        freeze_imports()
    loaded = [load_predictor(path, "/CPU:0", [1, 8, 16]) for path in VERSIONS]
    print(f"{label}, with the models loaded: {full_pass()}")
    del loaded
    print(f"{label}, the models dropped:     {full_pass()}")


if __name__ == "__main__":
    if sys.argv[1:] in (["frozen"], ["unfrozen"]):
        measure(sys.argv[1] == "frozen")
    else:
        for mode in ("unfrozen", "frozen"):
            subprocess.run([sys.executable, "-m", "benchmarks.gc_pause", mode], cwd=ROOT, check=True)
