"""Where models run: TensorFlow's thread pools and the choice of GPU or CPU."""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


def configure_device(device: str, intra_op_threads: int = 0, inter_op_threads: int = 0) -> str:
    """Apply the thread settings and return the TensorFlow device to place models on.

    `auto` takes the first GPU when one is visible, else the CPU; `gpu` without a GPU is a
    configuration error and fails start-up rather than silently running on the CPU.
    """
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
