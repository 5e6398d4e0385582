"""`python -m training cifar10|iris|calibrate`: train a model (or take an existing export), fit
its temperature on held-out data, export the next version with its reports and model card.

    python -m training cifar10 --data ../shared/datasets/cifar10-train.tar.gz
    python -m training iris
    python -m training calibrate models/cifar10/3    # same weights, calibrated: the next version
    python -m training fastpath models/cifar10/4 --data ../shared/datasets/cifar10-train.tar.gz
                                                     # adds its TFLite int8 form (training.fastpath)
    python -m training ood models/cifar10/4 --ood-data ../ood-cache
                                 # same weights, plus an out-of-distribution score: the next version
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import calibration, cifar10, data, export, fastpath, iris, model_card, ood, ood_data, reports
from training.robustness import predict_probabilities


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "training", *(sys.argv[1:] if argv is None else argv)])
    if args.model == "fastpath":
        add_fast_form(Path(args.source), command, args.data)
        return
    if args.model == "calibrate":
        try:
            version_dir = calibrate_export(Path(args.source), command, args.data)
        except (export.NotAProbabilityExport, NotCalibratable, FileNotFoundError) as error:
            raise SystemExit(f"calibrate: {error}; nothing written") from None
    elif args.model == "ood":
        try:
            version_dir = ood_export(Path(args.source), command, Path(args.ood_data), args.data)
        except (NotCalibratable, FileNotFoundError, ValueError) as error:
            raise SystemExit(f"ood: {error}; nothing written") from None
    else:
        keras.utils.set_random_seed(args.seed)
        # The precision policy is process-wide: a caller that goes on (tests, a notebook, a second
        # model) must not build its next models in this run's mixed precision.
        policy = keras.mixed_precision.global_policy()
        try:
            train = train_cifar10 if args.model == "cifar10" else train_iris
            version_dir = train(args, command)
        finally:
            keras.mixed_precision.set_global_policy(policy)
    metadata = export.load_metadata(version_dir)
    print(f"exported {version_dir}")
    print(f"metrics {metadata['metrics']}")
    print(calibration_summary(metadata["calibration"]))
    print(f"model card {version_dir / metadata['card']}")


def calibration_summary(fitted: dict) -> str:
    keys = ["accuracy", "nll", "ece", "brier", "mean_confidence"]
    rows = [f"calibration: temperature {fitted['temperature']}, fitted on {fitted['fitted_on']}"]
    rows.append(f"{'':>8}" + "".join(f"{k:>17}" for k in keys))
    for stage in ("before", "after"):
        rows.append(f"{stage:>8}" + "".join(f"{fitted[stage][k]:>17.4f}" for k in keys))
    return "\n".join(rows)


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

    def of_an_export(name: str, example: str, help_: str) -> argparse.ArgumentParser:
        """A command on an existing export's version folder, reading its training data again."""
        command = sub.add_parser(name, help=help_)
        command.add_argument("source", help=f"an export's version folder, e.g. {example}")
        command.add_argument(
            "--data", default=None, help="the training data, if not where the export's metadata says"
        )
        return command

    of_an_export(
        "calibrate",
        "models/cifar10/3",
        "fit a temperature to an existing export on the validation split it was trained "
        "with, and write it as the next version (same weights; the source is left untouched)",
    )
    of_an_export(
        "fastpath",
        "models/cifar10/5",
        "add a TFLite dynamic-range int8 form of an existing export to its version folder, "
        "declared in its metadata only if it keeps the accuracy and calibration (training.fastpath)",
    )
    of_an_export(
        "ood",
        "models/cifar10/4 (calibrated, of images)",
        "add an out-of-distribution score to an existing calibrated CIFAR-10 export (same weights "
        "and temperature, a second output `ood_score`), written as the next version",
    ).add_argument(
        "--ood-data",
        required=True,
        help="the folder `python -m training.ood_data --out FOLDER` wrote (ood-dev.npz, ood-eval.npz)",
    )
    return parser.parse_args(argv)


def add_fast_form(source: Path, command: str, data_path: str | None) -> None:
    """`fastpath`: convert, measure against the SavedModel, declare (or refuse), update the card."""
    if not (source / export.METADATA).is_file():
        raise SystemExit(f"fastpath: {source}: not an export (no {export.METADATA}); nothing written")
    metadata = export.load_metadata(source)
    try:
        entry = fastpath.add_fast_form(source, _training_data(metadata, data_path), command)
    except fastpath.Refused as error:
        raise SystemExit(f"fastpath: refused: {error}; nothing written") from None
    metadata = export.load_metadata(source)
    if metadata.get("card"):
        model_card.update_runtimes_section(source / metadata["card"], metadata)
    print(f"declared {fastpath.NAME} in {source / export.METADATA}: {json.dumps(entry['evaluation'])}")


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


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and cross-entropy of predicted probabilities."""
    return {
        "accuracy": round(float(np.mean(probabilities.argmax(1) == labels)), 4),
        "loss": round(calibration.negative_log_likelihood(probabilities, labels), 4),
        "examples": int(len(labels)),
    }


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------


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
    validation = dataset.validation
    by_tta = {
        tta: scores(
            predict_probabilities(cifar10.predict_fn(model, recipe, tta, dataset.jpeg), validation.x),
            validation.y,
        )["accuracy"]
        for tta in cifar10.TTA_VIEWS
    }
    return export_run(
        Run(
            name="cifar10",
            command=command,
            out=args.out,
            model=model,
            predict=tf.function(cifar10.predict_fn(model, recipe, jpeg=dataset.jpeg), reduce_retracing=True),
            dataset=dataset,
            input_spec={
                "name": "image",
                "shape": [32, 32, 3],
                "dtype": "uint8",
                "color": "RGB",
                "range": [0, 255],
                # applied inside the model, recorded for whoever reads the export
                "jpeg_round_trip": dataset.jpeg,
            },
            training=training_metadata(command, dataset.source, args.seed, epochs, recipe, seconds, strategy),
            extra_metrics={"validation_accuracy_by_tta": by_tta},
            history=history.history,
        )
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
    folds, out_of_fold = iris.cross_validate(x_all, y_all, recipe, args.seed, args.epochs)
    cv = {
        "folds": len(folds),
        "mean_accuracy": round(float(np.mean(folds)), 4),
        "std_accuracy": round(float(np.std(folds)), 4),
        "fold_accuracies": [round(f, 4) for f in folds],
    }
    epochs = args.epochs or recipe.epochs
    # 15 validation flowers, usually all right, would push the temperature towards zero
    # (certainty); the cross-validation's out-of-fold predictions hold 150 held-out answers.
    fitted_on = (
        f"cross_validation: out-of-fold predictions of the {len(folds)} fold models ({len(y_all)} flowers)"
    )
    return export_run(
        Run(
            name="iris",
            command=command,
            out=args.out,
            model=model,
            predict=tf.function(lambda features: model(features, training=False), reduce_retracing=True),
            dataset=dataset,
            input_spec={
                "name": "features",
                "shape": [4],
                "dtype": "float32",
                "feature_names": data.IRIS_FEATURES,
                "unit": "cm",
            },
            training=training_metadata(command, dataset.source, args.seed, epochs, recipe, seconds, None),
            extra_metrics={"cross_validation": cv},
            history=history.history,
            calibration_set=(fitted_on, out_of_fold, y_all),
        )
    )


# ---------------------------------------------------------------------------------------------
# Calibrating an existing export
# ---------------------------------------------------------------------------------------------


class NotCalibratable(ValueError):
    """An export that `calibrate` cannot (or must not) recalibrate."""


# Metadata keys that export_run and export_model write afresh; every other key is carried over.
# "runtimes": a fast form is made from (and measured against) the new version's own graph.
REWRITTEN = {"name", "version", "labels", "metrics", "training", "signature", "input", "output", "runtimes"}


def calibrate_export(source: Path, command: str, data_path: str | None = None) -> Path:
    """Write `source`'s weights with a temperature fitted on the validation split it was trained
    with as the next version of its model; the source is only read."""
    source = source.resolve()  # "." or a trailing slash still name the version folder
    if not (source / export.METADATA).is_file():
        raise FileNotFoundError(f"{source}: not an export (no {export.METADATA})")
    if not source.name.isdigit():
        raise NotCalibratable(f"{source}: not a version folder (<model>/<integer version>)")
    metadata = export.load_metadata(source)
    if "calibration" in metadata:
        raise NotCalibratable(
            f"{source} is calibrated already (temperature {metadata['calibration']['temperature']}); "
            f"calibrate the version it came from"
        )
    loaded, predict = export.load_serving_function(source)
    dataset = _training_data(metadata, data_path)
    metrics_file = source / export.METADATA.parent / "metrics.json"
    history = json.loads(metrics_file.read_text()).get("history") if metrics_file.is_file() else None
    return export_run(next_version(source, metadata, command, loaded, predict, dataset, history=history))


def next_version(
    source: Path,
    metadata: dict,
    command: str,
    model: keras.Model | tf.Module,
    predict: Callable,
    dataset: data.Dataset,
    *,
    history: dict | None = None,
    carried: dict | None = None,
    serve: Callable | None = None,
) -> Run:
    """The Run that exports `model` as the next version of `source`'s model: the same input,
    training record and further metrics, its metadata carried over (but what export_run writes
    afresh, and the source's calibration and lineage) with the lineage to `source` and `carried`."""
    spec = metadata["input"]
    kept = {k: v for k, v in metadata.items() if k not in REWRITTEN | {"calibration", "lineage"}}
    return Run(
        name=source.parent.name,
        command=command,
        out=source.parent.parent,
        model=model,
        predict=predict,
        dataset=dataset,
        input_spec={**spec, "shape": spec["shape"][1:]},  # export_model adds the batch axis
        training=metadata["training"],
        extra_metrics={k: v for k, v in metadata["metrics"].items() if k not in ("validation", "test")},
        history=history,
        carried={
            **kept,
            "lineage": {"source_version": int(source.name), "command": command},
            **(carried or {}),
        },
        serve=serve,
    )


def _training_data(metadata: dict, data_path: str | None) -> data.Dataset:
    """The dataset, split exactly as when `metadata`'s model was trained (same source and seed)."""
    training = metadata["training"]
    if metadata["input"]["name"] == "image":
        source = data_path or training["data_source"]
        dataset = data.load_cifar10(
            None if source == "keras.datasets.cifar10" else source, seed=training["seed"]
        )
    else:
        dataset = data.load_iris(seed=training["seed"])
    expected = metadata["metrics"]["validation"]["examples"]
    if dataset.labels != metadata["labels"] or len(dataset.validation.y) != expected:
        raise NotCalibratable(
            f"the data at {dataset.source} does not give the split the export was trained with "
            f"({len(dataset.validation.y)} validation examples of {dataset.labels}, expected {expected} "
            f"of {metadata['labels']})"
        )
    return dataset


# ---------------------------------------------------------------------------------------------
# Adding an out-of-distribution score to an existing export
# ---------------------------------------------------------------------------------------------


def ood_export(source: Path, command: str, ood_folder: Path, data_path: str | None = None) -> Path:
    """Write `source`'s network and temperature with an out-of-distribution score beside its
    probabilities (`training.ood`) as the next version of its model; the source is only read."""
    source = source.resolve()
    if not (source / export.METADATA).is_file():
        raise FileNotFoundError(f"{source}: not an export (no {export.METADATA})")
    metadata = export.load_metadata(source)
    if metadata["input"]["name"] != "image" or "calibration" not in metadata:
        raise NotCalibratable(f"{source}: the score is for calibrated CIFAR-10 image exports")
    recipe = cifar10.Recipe(
        **{**metadata["training"]["recipe"], "widths": tuple(metadata["training"]["recipe"]["widths"])}
    )
    if recipe.tta != "none":
        raise NotCalibratable(f"{source}: test-time augmentation {recipe.tta!r}; the score needs one view")
    dataset = _training_data(metadata, data_path)
    outliers = {split: ood_data.load(ood_folder, split) for split in ("dev", "eval")}
    temperature = float(metadata["calibration"]["temperature"])
    network = ood.rebuild_network(source, recipe, dataset.train.x)
    features = ood.feature_network(network)
    jpeg = metadata["input"].get("jpeg_round_trip")

    def pooled_and_logits(images):
        if jpeg:
            images = cifar10.jpeg_round_trip(images, jpeg["quality"], jpeg["chroma_subsampled"])
        return features(images, training=False)

    measure = tf.function(pooled_and_logits, reduce_retracing=True)

    def measured(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [
            [t.numpy() for t in measure(tf.constant(images[i : i + 500]))] for i in range(0, len(images), 500)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    print("measuring the network's features: training, validation and outlier images", flush=True)
    train_f, train_l = measured(dataset.train.x[: ood.TRAIN_IMAGES])
    val_f, val_l = measured(dataset.validation.x)
    dev_f, dev_l = measured(outliers["dev"]["x"])
    eval_f, eval_l = measured(outliers["eval"]["x"])
    head = ood.fit_head(train_f, train_l, dev_f, dev_l, temperature)
    val_scores = head.score(val_f, val_l)
    threshold = ood.threshold_for(val_scores)
    groups = outliers["eval"]["group"]
    # The same evaluation for the scores read off the outputs alone, to show what the head buys.
    compared = {
        "max_softmax_probability": ood.max_softmax_score,
        "energy": ood.energy_score,
    }
    baselines = {}
    for name, score in compared.items():
        v = score(val_l, temperature)
        baselines[name] = ood.evaluation(v, score(eval_l, temperature), groups, ood.threshold_for(v))
    v = ood.knn_score(val_f, train_f[:10_000])
    baselines["knn_50_pooled_features"] = ood.evaluation(
        v, ood.knn_score(eval_f, train_f[:10_000]), groups, ood.threshold_for(v)
    )
    declared = {
        "output": ood.OUTPUT,
        "method": ood.METHOD,
        "threshold": round(threshold, 4),
        "fitted_on": (
            f"{len(train_f)} training images against {len(dev_f)} outlier crops of "
            f"{len(set(outliers['dev']['source'].tolist()))} dev sources (training.ood_data); "
            f"threshold: {ood.ID_SHARE_KEPT:.0%} of the {len(val_f)} validation images answered"
        ),
        "abstained_validation": round(float(np.mean(val_scores > threshold)), 4),
        "evaluation": ood.evaluation(val_scores, head.score(eval_f, eval_l), groups, threshold),
        "evaluated_on": (
            f"validation images against {len(eval_f)} outlier crops of "
            f"{len(set(outliers['eval']['source'].tolist()))} eval sources never fitted on"
        ),
        "baselines": baselines,
    }
    print(f"ood: threshold {threshold:.4f}; evaluation {declared['evaluation']}", flush=True)

    def serve(images):
        pooled, logits = pooled_and_logits(images)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), ood.OUTPUT: head.in_graph(pooled, logits)}

    return export_run(
        next_version(
            source,
            metadata,
            command,
            network,
            tf.function(cifar10.predict_fn(network, recipe, jpeg=jpeg), reduce_retracing=True),
            dataset,
            carried={"ood": declared},
            serve=tf.function(serve, reduce_retracing=True),
        )
    )


# ---------------------------------------------------------------------------------------------
# Calibrate, measure, export
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A trained (or loaded) model on its way to becoming the next exported version."""

    name: str
    command: str
    out: str | Path  # export root: the version lands in <out>/<name>/<next>
    model: keras.Model | tf.Module  # holds the variables `predict` uses
    predict: Callable  # one raw input batch → class probabilities, before calibration
    dataset: data.Dataset
    input_spec: dict  # as export_model takes it (shape without the batch axis)
    training: dict  # metadata["training"]: how the weights were made
    extra_metrics: dict = field(default_factory=dict)
    history: dict | None = None  # per-epoch curves, for learning_curves.png
    # (fitted_on, probabilities, labels) to fit the temperature on; None: the validation split.
    calibration_set: tuple[str, np.ndarray, np.ndarray] | None = None
    carried: dict = field(default_factory=dict)  # further metadata keys (lineage, ...)
    # What the export serves when it answers more than `predict`: one raw input batch →
    # {"probabilities" (before calibration), further outputs}; None: `predict`.
    serve: Callable | None = None


def export_run(run: Run) -> Path:
    """Fit the temperature, measure everything the card reports, export with both."""
    validation, test = run.dataset.validation, run.dataset.test
    val_probabilities = predict_probabilities(run.predict, validation.x)
    _require_probabilities(val_probabilities)
    fitted_on, fit_probabilities, fit_labels = run.calibration_set or (
        "validation",
        val_probabilities,
        validation.y,
    )
    fitted = calibration.fit(fit_probabilities, fit_labels, fitted_on)
    temperature = fitted.temperature
    print(f"temperature {temperature:.4f} (fitted on {fitted_on}); measuring for the model card", flush=True)
    metrics = {
        "validation": scores(calibration.apply_temperature(val_probabilities, temperature), validation.y)
    }
    # Answers (argmax) are the same before and after calibration.
    held_out = ("validation", validation.y, val_probabilities.argmax(1))
    if test is not None:
        test_probabilities = predict_probabilities(run.predict, test.x)
        metrics["test"] = scores(calibration.apply_temperature(test_probabilities, temperature), test.y)
        held_out = ("test", test.y, test_probabilities.argmax(1))
    metrics.update(run.extra_metrics)
    evidence = model_card.gather_evidence(
        run.predict, run.dataset, (fitted, fit_probabilities, fit_labels), held_out, run.input_spec["name"]
    )
    metadata = {
        "labels": run.dataset.labels,
        "metrics": metrics,
        "training": run.training,
        **run.carried,
        "calibration": fitted.to_metadata(),
        "card": f"{export.METADATA.parent}/{model_card.CARD}",
    }

    def write_reports(folder: Path) -> None:
        report = {
            **metrics,
            "calibration": fitted.to_metadata(),
            "robustness": evidence.robustness,
            "out_of_distribution_confidence": evidence.ood,
            "confusion_matrix_split": evidence.held_out,
            "confusion_matrix": evidence.confusion.tolist(),
            "history": {k: [float(v) for v in vs] for k, vs in (run.history or {}).items()},
        }
        reports.write_reports(folder, report, run.history, run.name)
        if run.input_spec["name"] == "image":  # the CPU's fast form; the iris MLP is cheap as it is
            try:
                fastpath.add_fast_form(folder.parent, run.dataset, run.command)
            except fastpath.Refused as error:
                print(f"fast form not declared: {error}", flush=True)
        model_card.write_model_card(folder, json.loads((folder / export.METADATA.name).read_text()), evidence)

    return export.export_model(
        run.model,
        run.serve or run.predict,
        run.out,
        run.name,
        run.input_spec,
        metadata,
        reports=write_reports,
        temperature=temperature,
    )


def _require_probabilities(probabilities: np.ndarray) -> None:
    if (
        probabilities.ndim != 2
        or probabilities.min() < 0
        or not np.allclose(probabilities.sum(1), 1, atol=1e-3)
    ):
        raise NotCalibratable("the export's `probabilities` are not probabilities (rows must sum to 1)")


if __name__ == "__main__":
    main()
