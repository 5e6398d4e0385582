"""Each peer in its own virtual environment, pinned, installed on first use and reused after.

Installed under ~/.cache/cifar-serving/peers/<name>-<version>/ (or $PEERS_CACHE), so that a
peer's dependencies never meet the project's or each other's; a venv counts as installed
only once pip finished with exactly the pinned requirements (the `.installed` marker), so an
interrupted install, or one from older pins, is completed by pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The project's TensorFlow, so every server runs the same kernels on the same SavedModel.
TENSORFLOW = "tensorflow==2.21.0"
PILLOW = "pillow>=12.3"
# ai-edge-litert and pydantic: the fast form's runtime and the metadata it reads (litserve-int8).
LITSERVE = (
    "litserve==0.2.19",
    TENSORFLOW,
    PILLOW,
    "python-multipart",
    "ai-edge-litert>=2.3,<2.4",
    "pydantic>=2.7,<3",
)


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    requirements: tuple[str, ...]
    python: str = sys.executable  # the interpreter the venv is built from

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


PEERS = {
    # PyTriton's wheel carries a tritonserver binary linked against the system Python 3.11 it
    # was built with, and its proxy needs numpy < 2.
    "triton": Peer(
        "triton",
        "0.7.0",
        ("nvidia-pytriton==0.7.0", "numpy<2", TENSORFLOW, PILLOW, "starlette", "uvicorn", "python-multipart"),
        python="/usr/bin/python3.11",
    ),
    "litserve": Peer("litserve", "0.2.19", LITSERVE),
    # The same LitServe serving the export's CPU fast form through the service's own runtime
    # (service/runtimes.py), so that the service's lead over it is the server's alone.
    "litserve-int8": Peer("litserve", "0.2.19", LITSERVE),
    # 1.4.40 reuses closed connections: about 2% of requests get a 500 under load.
    "bentoml": Peer("bentoml", "1.4.30", ("bentoml==1.4.30", TENSORFLOW, PILLOW)),
    "ray": Peer("ray", "2.60.0", ("ray[serve]==2.60.0", TENSORFLOW, PILLOW, "python-multipart")),
}


def cache_root() -> Path:
    return Path(os.environ.get("PEERS_CACHE", Path.home() / ".cache" / "cifar-serving" / "peers"))


def venv_python(peer: Peer) -> Path:
    """The peer's interpreter, installing its venv first unless it holds these requirements."""
    folder = cache_root() / f"{peer.name}-{peer.version}"
    python, marker = folder / "bin" / "python", folder / ".installed"
    wanted = "\n".join(peer.requirements) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return python
    print(f"installing {peer.label} into {folder}", flush=True)
    if not python.exists():
        subprocess.run([peer.python, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *peer.requirements], check=True)
    marker.write_text(wanted)
    return python


if __name__ == "__main__":  # python -m benchmarks.peers.install [name ...]: install ahead of a run
    for name in sys.argv[1:] or PEERS:
        print(venv_python(PEERS[name]))
