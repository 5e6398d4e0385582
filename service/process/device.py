"""Where models run: TensorFlow's thread pools and the choice of GPU or CPU."""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from collections.abc import MutableMapping

log = logging.getLogger(__name__)


def quiet_tensorflow(device: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep TensorFlow's start-up log to real problems; call before TensorFlow is imported.

    TensorFlow's full (GPU) build asks the CUDA driver for GPUs on first use and, on a machine
    with no NVIDIA driver at all, logs that failure at error level ("failed call to cuInit ...
    UNKNOWN ERROR (303)") before carrying on with the CPU. When the CPU is what was asked for
    (DEVICE=auto or cpu) and no driver exists, that line reports nothing wrong, so TensorFlow's
    C++ log is limited to fatal messages. Everything else stays as TensorFlow has it: with a
    driver, with DEVICE=gpu (which must fail loudly), and with the CPU build (`tensorflow-cpu`),
    which never looks for CUDA. A TF_CPP_MIN_LOG_LEVEL set by the user is left alone.
    """
    if device != "gpu" and _looks_for_cuda() and not nvidia_driver_present():
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# TensorFlow's C++ start-up notices at INFO level ("I1206 12:00:00.000 port.cc:153] oneDNN custom
# operations are on ...", the CPU feature guard and its continuation line), and absl's remark that
# they came before its log was set up.
_IMPORT_NOTICE = re.compile(
    r"I\d{4} .*|To enable the following instructions: .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up notices left out of stderr, and nothing else.

    TensorFlow 2.21 logs its INFO notices through absl while the shared libraries load, before
    TF_CPP_MIN_LOG_LEVEL is read, so a user's first sight of the service was a "WARNING" that
    warns of nothing. During the import the process's stderr goes to a file; every line but
    those notices is written back, so warnings and errors still show, in order.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  # imported for its side effect, once per process
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            sys.stderr.write("".join(f"{line}\n" for line in lines if not _IMPORT_NOTICE.fullmatch(line)))
            sys.stderr.flush()


def _looks_for_cuda() -> bool:
    """Whether the installed TensorFlow is a build that looks for CUDA (not `tensorflow-cpu`)."""
    try:
        importlib.metadata.distribution("tensorflow-cpu")
    except importlib.metadata.PackageNotFoundError:
        return True
    return False


def nvidia_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")  # what TensorFlow loads; the NVIDIA container toolkit mounts it
    except OSError:
        return False
    return True


def configure_device(device: str, intra_op_threads: int = 0, inter_op_threads: int = 0) -> str:
    """Apply the thread settings and return the TensorFlow device to place models on.

    `auto` takes the first GPU when one is visible, else the CPU; `gpu` without a GPU is a
    configuration error and fails start-up rather than silently running on the CPU.
    """
    import tensorflow as tf  # here, so that quiet_tensorflow can run before the import

    gpus = tf.config.list_physical_devices("GPU")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        # Grow GPU memory as needed instead of taking all of it, so other processes fit.
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        # TensorFlow is already initialised (a second app in the same process, as in tests):
        # the first settings stay, which is harmless.
        log.debug("TensorFlow runtime already initialised; thread and memory settings unchanged")
    if device == "gpu" and not gpus:
        raise RuntimeError("DEVICE=gpu but TensorFlow sees no GPU")
    return "/GPU:0" if gpus and device != "cpu" else "/CPU:0"
