"""What computes a model version's outputs: its SavedModel through TensorFlow, or a faster form
of the same model that the export declares (`metadata.json` "runtimes", written by
`training.fastpath`), a TFLite file run by LiteRT's interpreter with XNNPACK's int8 kernels.

MODEL_RUNTIME picks one per model: `auto` (the default) serves the declared fast form on a CPU and
the SavedModel on a GPU or where none is declared; `savedmodel` always the SavedModel; a fast
form's name (e.g. `tflite-int8`) that form wherever a model declares it, the SavedModel elsewhere.

Both answer every output of the serving signature, by name, for a batch of raw input rows. A fast
form without the SavedModel's in-graph JPEG round trip gets it here, in Pillow, with the quality
and chroma subsampling the metadata declares: the same libjpeg, tables and integer IDCT as the
graph's, so the pixels it sees are bit-identical (tests/test_service_runtimes.py).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from model_repository import FastRuntime, Metadata

AUTO = "auto"
SAVEDMODEL = "savedmodel"


def choose_runtime(setting: str, contract: Metadata, device: str) -> str:
    """The runtime that serves a model: MODEL_RUNTIME `setting` against what it declares."""
    if setting == SAVEDMODEL:
        return SAVEDMODEL
    if setting == AUTO:
        cpu_forms = sorted(name for name, form in contract.runtimes.items() if form.device == "cpu")
        return cpu_forms[0] if cpu_forms and "GPU" not in device.upper() else SAVEDMODEL
    return setting if setting in contract.runtimes else SAVEDMODEL


class SavedModelRuntime:
    """The export's serving signature, called as a concrete function: no Keras predict() loop and
    no retracing at any batch size. Batches are not padded to a few fixed sizes: a first call at
    a new size costs a little more once (measured on the CIFAR-10 CNN), where padding would cost
    up to twice the compute on every call."""

    name = format = SAVEDMODEL

    def __init__(self, version_dir: Path, contract: Metadata, device: str):
        import tensorflow as tf  # here: the fast runtime needs no TensorFlow to compute

        self._tf = tf
        self._device = device
        self._input_name = contract.input.name
        self._input_dtype = np.dtype(contract.input.dtype)
        with tf.device(device):
            self._loaded = tf.saved_model.load(str(version_dir))
        self._signature = self._loaded.signatures[contract.signature]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._tf.device(self._device):
            outputs = self._signature(**{self._input_name: self._tf.constant(batch, self._input_dtype)})
        return {name: tensor.numpy() for name, tensor in outputs.items()}


class TFLiteRuntime:
    """A TFLite form of the model on LiteRT's interpreter.

    An interpreter is not thread-safe, so each thread that runs the model gets its own (the
    batcher runs each model on one thread of its own: in practice one set per model). Resizing an
    interpreter's input and reallocating its tensors costs 0.1-0.2 ms at batch 1-64, and XNNPACK
    sets its kernels up again on the next call, while a row costs about the same at any batch size
    (benchmarks/results/fastpath_inprocess.md), and a row's answer does not depend on the rows
    beside it (activations are quantized per row). So no batch is ever padded or resized: it runs
    as chunks of 32, 16, 8, 4, 2 and 1 rows (37 rows: 32 + 4 + 1), each on an interpreter
    allocated once at that size and kept (about 10 ms to build, once per size and thread).
    `allocations` counts tensor allocations, for the tests to see they stop.
    """

    CHUNKS = (32, 16, 8, 4, 2, 1)

    def __init__(self, name: str, version_dir: Path, form: FastRuntime, contract: Metadata, threads: int = 1):
        self.name = name
        self.form = form
        self.format = form.format
        self._model = (version_dir / form.path).read_bytes()
        self._threads = threads or None  # None: LiteRT's default
        self._input_shape = tuple(contract.input.shape[1:])
        self._input_dtype = np.dtype(contract.input.dtype)
        jpeg = contract.input.model_extra.get("jpeg_round_trip") if contract.input.model_extra else None
        self._jpeg: dict | None = None if form.includes_jpeg_round_trip else jpeg
        self._local = threading.local()
        self._lock = threading.Lock()  # for the counter only
        self.allocations = 0
        _announce_xnnpack_quietly(self._model)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(batch, self._thread_interpreters())

    def warm_up(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run `batch` on interpreters of its own, dropped afterwards: warm-up runs on a loading
        thread, and an interpreter must never pass from one thread to another. The model's thread
        sets its own up at its first batch of each chunk size (about 10 ms each, once)."""
        return self._run(batch, {})

    def _run(self, batch: np.ndarray, interpreters: dict) -> dict[str, np.ndarray]:
        rows = np.asarray(batch, self._input_dtype)
        if self._jpeg is not None:
            rows = jpeg_round_trip(rows, self._jpeg["quality"], self._jpeg["chroma_subsampled"])
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.form.outputs}
        for start, size in chunks(len(rows), self.CHUNKS):
            if size not in interpreters:
                interpreters[size] = self._interpreter(size)
            interpreter, input_index, output_indices = interpreters[size]
            interpreter.set_tensor(input_index, rows[start : start + size])
            interpreter.invoke()
            for name, index in output_indices.items():
                parts[name].append(interpreter.get_tensor(index))  # a copy
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    def _thread_interpreters(self) -> dict:
        interpreters = getattr(self._local, "interpreters", None)
        if interpreters is None:
            interpreters = self._local.interpreters = {}
        return interpreters

    def _interpreter(self, size: int):
        from ai_edge_litert.interpreter import Interpreter  # only where a fast form is served

        interpreter = Interpreter(model_content=self._model, num_threads=self._threads)
        runner = interpreter.get_signature_runner()
        input_index = runner.get_input_details()[self.form.input]["index"]
        output_indices = {name: runner.get_output_details()[name]["index"] for name in self.form.outputs}
        del runner  # it holds views of the interpreter's tensors, which would forbid resizing
        interpreter.resize_tensor_input(input_index, [size, *self._input_shape], strict=True)
        interpreter.allocate_tensors()
        with self._lock:
            self.allocations += 1
        return interpreter, input_index, output_indices


_XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_announced = threading.Lock()


def _announce_xnnpack_quietly(model: bytes) -> None:
    """LiteRT prints its XNNPACK notice to stderr once per process, at the first interpreter: make
    that one here, at load time, with the notice left out of the log and every other line kept,
    as service.process.device does for TensorFlow's import notices."""
    if not _announced.acquire(blocking=False):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            from ai_edge_litert.interpreter import Interpreter

            Interpreter(model_content=model, num_threads=1).allocate_tensors()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            sys.stderr.write("".join(f"{line}\n" for line in lines if line != _XNNPACK_NOTICE))
            sys.stderr.flush()


def chunks(total: int, sizes: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """(start, size) pieces of `total` rows, greedily from the largest of `sizes` (which holds 1)."""
    start = 0
    while start < total:
        size = next(s for s in sizes if s <= total - start)
        yield start, size
        start += size


def jpeg_round_trip(rows: np.ndarray, quality: int, chroma_subsampled: bool) -> np.ndarray:
    """Each uint8 RGB row JPEG-encoded and decoded again in Pillow, as the training images were
    (and as `training.cifar10.jpeg_round_trip` does inside the SavedModel)."""
    out = np.empty_like(rows)
    subsampling = 2 if chroma_subsampled else 0  # Pillow's 4:2:0 and 4:4:4
    for i, row in enumerate(rows):
        encoded = io.BytesIO()
        Image.fromarray(row).save(encoded, "JPEG", quality=quality, subsampling=subsampling)
        with Image.open(encoded) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out


def load_runtime(
    version_dir: Path, contract: Metadata, device: str, setting: str = AUTO, threads: int = 1
) -> SavedModelRuntime | TFLiteRuntime:
    """The runtime MODEL_RUNTIME `setting` picks for this export, loaded."""
    name = choose_runtime(setting, contract, device)
    if name == SAVEDMODEL:
        return SavedModelRuntime(version_dir, contract, device)
    return TFLiteRuntime(name, version_dir, contract.runtimes[name], contract, threads)
