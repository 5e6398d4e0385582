"""A faster form of an export for CPUs: its network as a TFLite dynamic-range int8 model, beside
the SavedModel in the same version folder, declared in `metadata.json` only if it keeps the
SavedModel's accuracy and calibration on held-out data.

    python -m training fastpath models/cifar10/4 --data ../shared/datasets/cifar10-train.tar.gz

What is converted is the SavedModel's serving signature, every output of it, minus the JPEG round
trip an image export does inside its graph (no converter takes the JPEG ops; the service does the
round trip in Pillow before the fast form, bit-identical: `service.runtimes`). Weights become int8
(per tensor); activations stay float, quantized per row at run time by XNNPACK's int8 kernels,
which is where the speed comes from on CPUs with AVX-512 VNNI. On the shipped cifar10 v4 the
per-channel variant lost 0.18 pt of accuracy on the validation split, the per-tensor one 0.10.

The fast form is measured exactly as served (`service.runtimes`, on the held-out split the model
was trained with: test if the data has one, else validation) against the SavedModel, and declared
only when accuracy drops at most MAX_ACCURACY_DROP and ECE rises at most MAX_ECE_RISE; otherwise
nothing is written (`Refused`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from model_repository import FastRuntime, Metadata, load_metadata, read_metadata, write_metadata
from service.runtimes import SavedModelRuntime, TFLiteRuntime
from training import calibration, data

NAME = "tflite-int8"
FILE = f"{NAME}/model.tflite"
MAX_ACCURACY_DROP = 0.001  # 0.1 point
MAX_ECE_RISE = 0.005
BATCH = 500  # rows per call while measuring
QUANTIZATION = "dynamic-range int8: int8 weights per tensor, float activations quantized per row at run time"


class Refused(ValueError):
    """A fast form that would serve worse answers than the SavedModel, or cannot be made."""


def without_jpeg_round_trip(signature) -> tf.types.experimental.ConcreteFunction:
    """`signature` frozen, with its input fed in after the in-graph JPEG round trip (the stack of
    the `map` whose body decodes JPEG), and every output kept under its name. A graph without
    the round trip is frozen as it is."""
    frozen = convert_variables_to_constants_v2(signature)
    graph_def = frozen.graph.as_graph_def()
    for node in graph_def.node:  # ordering edges only: the variables are constants now
        kept = [name for name in node.input if not name.startswith("^")]
        del node.input[:]
        node.input.extend(kept)
    ((input_name, spec),) = signature.structured_input_signature[1].items()
    names = sorted(signature.structured_outputs)  # the order of frozen.outputs
    fetched = [tensor.name for tensor in frozen.outputs]
    decoders = [node.name for node in graph_def.node if node.op == "DecodeJpeg"]
    if len(decoders) > 1:
        raise Refused(f"{len(decoders)} JPEG decoders in the graph; expected the one round trip")
    feed = None
    if decoders:
        scope = decoders[0].split("/while/")[0]  # .../map, the tf.map_fn of the round trip
        stacks = [
            n.name for n in graph_def.node if n.op == "TensorListStack" and n.name.startswith(scope + "/")
        ]
        if len(stacks) != 1:
            raise Refused(f"cannot find where the JPEG round trip ends in the graph ({stacks})")
        feed = stacks[0] + ":0"

    def imported():
        rows = tf.compat.v1.placeholder(spec.dtype, spec.shape, name="rows")
        tf.compat.v1.import_graph_def(graph_def, input_map={feed or f"{input_name}:0": rows}, name="net")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    pruned = wrapped.prune(
        feeds=[wrapped.graph.get_tensor_by_name("rows:0")],
        fetches=[wrapped.graph.get_tensor_by_name(f"net/{name}") for name in fetched],
    )

    @tf.function(input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=input_name)])
    def serve(rows):
        return dict(zip(names, pruned(rows), strict=True))

    return serve.get_concrete_function()


def convert(version_dir: Path, signature_name: str) -> bytes:
    """The TFLite dynamic-range int8 model of the export's serving signature, without the round trip."""
    loaded = tf.saved_model.load(str(version_dir))  # held: the signature's variables live in it
    function = without_jpeg_round_trip(loaded.signatures[signature_name])
    with tempfile.TemporaryDirectory() as scratch:
        # Through a SavedModel, so the TFLite file keeps a signature with the inputs' and outputs' names.
        module = tf.Module()
        module.serve = function
        tf.saved_model.save(module, scratch, signatures={"serving_default": function})
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
        converter._experimental_disable_per_channel = True  # per tensor (module docstring: accuracy)
        return converter.convert()


def evaluate(version_dir: Path, contract: Metadata, form: FastRuntime, split: data.Split) -> dict:
    """The fast form against the SavedModel on `split`, both as the service runs them."""
    savedmodel = SavedModelRuntime(version_dir, contract, "/CPU:0")
    fast = TFLiteRuntime(NAME, version_dir, form, contract)
    output = contract.output.name

    def outputs(runtime) -> dict[str, np.ndarray]:
        parts = [runtime.run(split.x[i : i + BATCH]) for i in range(0, len(split.x), BATCH)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    expected, answered = outputs(savedmodel), outputs(fast)
    reference, candidate = expected[output], answered[output]
    evaluation = {
        "examples": len(split.y),
        "savedmodel": _scores(reference, split.y),
        NAME: _scores(candidate, split.y),
        "top1_agreement": round(float(np.mean(reference.argmax(1) == candidate.argmax(1))), 4),
        "max_abs_probability_difference": round(float(np.abs(reference - candidate).max()), 4),
        "max_row_sum_error": round(float(np.abs(candidate.sum(1) - 1).max()), 6),
    }
    if contract.ood is not None:  # the abstain decision must not depend on the runtime either
        score, threshold = contract.ood.output, contract.ood.threshold
        evaluation["abstain_agreement"] = round(
            float(np.mean((expected[score] > threshold) == (answered[score] > threshold))), 4
        )
        evaluation["max_abs_ood_score_difference"] = round(
            float(np.abs(expected[score] - answered[score]).max()), 4
        )
    return evaluation


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    m = calibration.calibration_metrics(probabilities, labels)
    return {key: m[key] for key in ("accuracy", "ece", "nll")}


def verdict(evaluation: dict) -> str | None:
    """Why the fast form must not be declared, or None when it keeps accuracy and calibration."""
    before, after = evaluation["savedmodel"], evaluation[NAME]
    drop = round(before["accuracy"] - after["accuracy"], 4)
    rise = round(after["ece"] - before["ece"], 4)
    if drop > MAX_ACCURACY_DROP:
        return (
            f"accuracy {after['accuracy']:.4f} against the SavedModel's {before['accuracy']:.4f}: "
            f"drops {drop:.4f} > {MAX_ACCURACY_DROP}"
        )
    if rise > MAX_ECE_RISE:
        return (
            f"ECE {after['ece']:.4f} against the SavedModel's {before['ece']:.4f}: "
            f"rises {rise:.4f} > {MAX_ECE_RISE}"
        )
    return None


def add_fast_form(version_dir: Path, dataset: data.Dataset, command: str) -> dict:
    """Convert, measure and (if it holds up) declare the fast form of the export in `version_dir`;
    returns its metadata entry, or raises Refused with the figures and nothing written."""
    contract = read_metadata(version_dir)
    target = version_dir / FILE
    split_name, split = (
        ("test", dataset.test) if dataset.test is not None else ("validation", dataset.validation)
    )
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(convert(version_dir, contract.signature))
    try:
        outputs = sorted(
            tf.saved_model.load(str(version_dir)).signatures[contract.signature].structured_outputs
        )
        form = FastRuntime(
            format="tflite",
            path=FILE,
            input=contract.input.name,
            outputs=outputs,
            includes_jpeg_round_trip=False,
        )
        evaluation = {"split": split_name, **evaluate(version_dir, contract, form, split)}
        if why := verdict(evaluation):
            raise Refused(f"{why} on the {split_name} split ({len(split.y)} examples)")
    except BaseException:
        shutil.rmtree(target.parent)
        raise
    entry = {
        **form.model_dump(mode="json"),
        "quantization": QUANTIZATION,
        "size_bytes": target.stat().st_size,
        "command": command,
        "tensorflow_version": tf.__version__,
        "evaluation": evaluation,
    }
    metadata = load_metadata(version_dir)
    metadata["runtimes"] = {**metadata.get("runtimes", {}), NAME: entry}
    write_metadata(version_dir, metadata)
    return entry
