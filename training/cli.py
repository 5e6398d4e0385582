"""`python -m training cifar10|iris`: train, evaluate, export the next version, write reports."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import cifar10, data, export, iris, reports


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "training", *(sys.argv[1:] if argv is None else argv)])
    keras.utils.set_random_seed(args.seed)
    # The precision policy is process-wide: a caller that goes on (tests, a notebook, a second
    # model) must not build its next models in this run's mixed precision.
    policy = keras.mixed_precision.global_policy()
    try:
        version_dir = train_cifar10(args, command) if args.model == "cifar10" else train_iris(args, command)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    metrics = export.load_metadata(version_dir)["metrics"]
    print(f"exported {version_dir}")
    print(f"metrics {metrics}")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    for name, help_ in (("cifar10", "the CIFAR-10 CNN"), ("iris", "the Iris MLP")):
        p = sub.add_parser(name, help=f"train and export {help_}")
        p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
        p.add_argument("--out", default="models", help="export root (default: models)")
        p.add_argument("--seed", type=int, default=0)
    sub.choices["cifar10"].add_argument(
        "--data",
        default=None,
        help="local copy: class-folder tree or .tar(.gz), or cifar-10-batches-py folder/.tar.gz "
        "(default: download with keras.datasets.cifar10)",
    )
    sub.choices["cifar10"].add_argument("--batch-size", type=int, default=None)
    sub.choices["cifar10"].add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        help="training precision (default auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs "
        "with bfloat16 instructions, else float32); exports are always float32",
    )
    return parser.parse_args(argv)


def distribution_strategy(precision: str = "auto") -> tf.distribute.Strategy:
    """GPUs when visible: memory growth, mixed float16, and mirrored across several. CPUs with
    bfloat16 instructions: mixed bfloat16 (2x the float32 training speed on the 2-core AVX512-BF16
    machine this was tuned on). Else float32. `precision` other than "auto" overrides the policy."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if precision == "auto":
        precision = "mixed_float16" if gpus else "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN has native bfloat16 here; without it bfloat16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def float32_twin(build, trained: keras.Model) -> keras.Model:
    """The trained network rebuilt in float32 with its weights (which mixed precision keeps in
    float32 anyway): exports serve in full precision on any CPU or GPU, whatever trained them."""
    policy = keras.mixed_precision.global_policy()
    if policy.name == "float32":
        return trained
    keras.mixed_precision.set_global_policy("float32")
    try:
        twin = build()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(trained.get_weights())
    return twin


def training_metadata(command, source, seed, epochs, recipe, seconds, strategy) -> dict:
    return {
        "command": command,
        "data_source": source,
        "seed": seed,
        "epochs": epochs,
        "recipe": recipe.to_dict(),
        "training_seconds": round(seconds, 1),
        "devices": strategy.num_replicas_in_sync if strategy else 1,
        "precision": keras.mixed_precision.global_policy().name,
        "accelerator": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def evaluate(predict, x, y, batch_size=500) -> tuple[dict, np.ndarray]:
    """Accuracy and cross-entropy of the exported inference function; also its predictions."""
    fn = tf.function(predict)
    probs = np.concatenate(
        [fn(tf.constant(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    )
    pred = probs.argmax(1)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1))))
    return {
        "accuracy": round(float(np.mean(pred == y)), 4),
        "loss": round(loss, 4),
        "examples": int(len(y)),
    }, pred


def train_cifar10(args, command):
    strategy = distribution_strategy(args.precision)
    recipe = cifar10.Recipe()
    if args.batch_size:
        recipe = dataclasses.replace(recipe, batch_size=args.batch_size)
    dataset = data.load_cifar10(args.data, seed=args.seed)
    print(
        f"CIFAR-10 from {dataset.source}: train {len(dataset.train.x)}, "
        f"validation {len(dataset.validation.x)}, test {len(dataset.test.x) if dataset.test else 0}"
        f"; {keras.mixed_precision.global_policy().name}"
    )

    def build():
        return cifar10.build_model(recipe, dataset.train.x, len(dataset.labels))

    started = time.perf_counter()
    with strategy.scope():
        model = build()
        history = cifar10.train(model, dataset, recipe, args.seed, args.epochs)
    seconds = time.perf_counter() - started
    model = float32_twin(build, model)
    epochs = args.epochs or recipe.epochs
    # What each test-time augmentation scores, to see what the exported one pays for its cost.
    by_tta = {
        tta: evaluate(
            cifar10.predict_fn(model, recipe, tta, dataset.jpeg), dataset.validation.x, dataset.validation.y
        )[0]["accuracy"]
        for tta in cifar10.TTA_VIEWS
    }
    predict = cifar10.predict_fn(model, recipe, jpeg=dataset.jpeg)
    return _export(
        args,
        "cifar10",
        model,
        predict,
        dataset,
        history,
        command,
        epochs,
        recipe,
        seconds,
        strategy,
        input_spec={
            "name": "image",
            "shape": [32, 32, 3],
            "dtype": "uint8",
            "color": "RGB",
            "range": [0, 255],
            # applied inside the model, recorded for whoever reads the export
            "jpeg_round_trip": dataset.jpeg,
        },
        extra={"validation_accuracy_by_tta": by_tta},
    )


def train_iris(args, command):
    recipe = iris.Recipe()
    dataset = data.load_iris(seed=args.seed)
    started = time.perf_counter()
    model = iris.build_model(recipe, dataset.train.x, len(dataset.labels))
    history = iris.train(model, dataset, recipe, args.epochs)
    seconds = time.perf_counter() - started
    x_all = np.concatenate([dataset.train.x, dataset.validation.x, dataset.test.x])
    y_all = np.concatenate([dataset.train.y, dataset.validation.y, dataset.test.y])
    folds = iris.cross_validate(x_all, y_all, recipe, args.seed, args.epochs)
    cv = {
        "folds": len(folds),
        "mean_accuracy": round(float(np.mean(folds)), 4),
        "std_accuracy": round(float(np.std(folds)), 4),
        "fold_accuracies": [round(f, 4) for f in folds],
    }
    epochs = args.epochs or recipe.epochs

    def predict(features):
        return model(features, training=False)

    return _export(
        args,
        "iris",
        model,
        predict,
        dataset,
        history,
        command,
        epochs,
        recipe,
        seconds,
        None,
        input_spec={
            "name": "features",
            "shape": [4],
            "dtype": "float32",
            "feature_names": data.IRIS_FEATURES,
            "unit": "cm",
        },
        extra={"cross_validation": cv},
    )


def _export(
    args,
    name,
    model,
    predict,
    dataset,
    history,
    command,
    epochs,
    recipe,
    seconds,
    strategy,
    input_spec,
    extra,
):
    metrics = {}
    metrics["validation"], val_pred = evaluate(predict, dataset.validation.x, dataset.validation.y)
    judged, judged_pred, judged_on = dataset.validation, val_pred, "validation"
    if dataset.test is not None:
        metrics["test"], judged_pred = evaluate(predict, dataset.test.x, dataset.test.y)
        judged, judged_on = dataset.test, "test"
    metrics.update(extra)
    confusion = reports.confusion_matrix(judged.y, judged_pred, len(dataset.labels))
    meta = {
        "labels": dataset.labels,
        "metrics": metrics,
        "training": training_metadata(command, dataset.source, args.seed, epochs, recipe, seconds, strategy),
    }

    def write_reports(folder):
        reports.write_reports(
            folder,
            {
                **metrics,
                "confusion_matrix_split": judged_on,
                "confusion_matrix": confusion.tolist(),
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            },
            history.history,
            dataset.labels,
            confusion,
            name,
        )

    return export.export_model(model, predict, args.out, name, input_spec, meta, write_reports)


if __name__ == "__main__":
    main()
