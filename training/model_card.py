"""The model card: `assets.extra/MODEL_CARD.md` beside every export, and its plots.

It says what the model is for, what it was trained on and how (the exact command), how well it
does overall, per class and under common corruptions, how far its probabilities can be trusted
(reliability diagrams before and after calibration), and what it does with inputs of no class.
`gather_evidence` measures; `write_model_card` writes; both work on the exported inference
function, so the card describes what is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import calibration, reports, robustness
from training.calibration import Calibration

CARD = "MODEL_CARD.md"

PURPOSES = {
    "cifar10": "Classifies small photos (32×32 RGB) into one of the ten CIFAR-10 classes: airplane, "
    "automobile, bird, cat, deer, dog, frog, horse, ship, truck. Meant for demonstrating and "
    "load-testing an image-classification service, not for decisions about people or safety.",
    "iris": "Classifies an iris flower into setosa, versicolor or virginica from four measurements "
    "in centimetres (sepal length and width, petal length and width). A teaching-sized model of "
    "Fisher's 150 flowers; not a botanical tool.",
}


@dataclass(frozen=True)
class Evidence:
    """What the card reports, measured on held-out data."""

    labels: list[str]
    calibration: Calibration
    fit_probabilities: np.ndarray  # uncalibrated, on the data T was fitted on (reliability diagrams)
    fit_labels: np.ndarray
    held_out: str  # the split of the per-class accuracy and confusion matrix
    confusion: np.ndarray
    splits: dict[str, int]  # examples per split
    robustness: dict[str, float] | None  # images only: accuracy per corruption
    ood: dict[str, dict]  # robustness.ood_confidence rows
    ood_description: str


def gather_evidence(predict, dataset, fit, held_out_predictions, input_kind: str) -> Evidence:
    """`predict`: the uncalibrated inference function; `fit`: (Calibration, its probabilities,
    its labels); `held_out_predictions`: (split name, labels, predicted classes)."""
    fitted, fit_probabilities, fit_labels = fit
    split, y_true, y_pred = held_out_predictions
    splits = {"train": len(dataset.train.y), "validation": len(dataset.validation.y)}
    if dataset.test is not None:
        splits["test"] = len(dataset.test.y)
    if input_kind == "image":
        images = robustness.ood_images(*dataset.validation.x.shape[1:3])
        known = y_pred if split == "validation" else None
        table = robustness.robustness_table(predict, dataset.validation.x, dataset.validation.y, known)
        described = (
            f"{robustness.OOD_PER_KIND} generated 32×32 images of each kind: uniform noise, flat colours, "
            "short words rendered in Pillow's default font on a flat background, linear colour gradients"
        )
    else:
        images, table = robustness.ood_features(features=dataset.validation.x.shape[1]), None
        described = "random measurement vectors, each feature drawn uniformly from 0-10 cm"
    return Evidence(
        labels=dataset.labels,
        calibration=fitted,
        fit_probabilities=fit_probabilities,
        fit_labels=fit_labels,
        held_out=split,
        confusion=reports.confusion_matrix(y_true, y_pred, len(dataset.labels)),
        splits=splits,
        robustness=table,
        ood=robustness.ood_confidence(predict, images, fitted.temperature),
        ood_description=described,
    )


def write_model_card(folder: Path, metadata: dict, evidence: Evidence) -> Path:
    """MODEL_CARD.md and its PNGs into `folder` (the export's assets.extra/)."""
    name, version = metadata["name"], metadata["version"]
    title = f"{name} v{version}"
    fitted = evidence.calibration
    after = calibration.apply_temperature(evidence.fit_probabilities, fitted.temperature)
    for stage, probabilities, scores in (
        ("before", evidence.fit_probabilities, fitted.before),
        ("after", after, fitted.after),
    ):
        table = calibration.reliability(probabilities, evidence.fit_labels)
        heading = f"{title}, {stage} calibration, on {fitted.fitted_on.split(':')[0]}"
        reports.plot_reliability(table, scores, folder / f"reliability_{stage}.png", heading)
    reports.plot_confusion(evidence.confusion, evidence.labels, folder / "confusion_matrix.png", title)
    reports.plot_per_class_accuracy(
        evidence.confusion, evidence.labels, folder / "per_class_accuracy.png", title
    )
    path = folder / CARD
    path.write_text(_markdown(metadata, evidence))
    return path


def _markdown(meta: dict, ev: Evidence) -> str:
    training, fitted = meta.get("training", {}), ev.calibration
    lineage = meta.get("lineage")
    per_class = np.diag(ev.confusion) / np.maximum(ev.confusion.sum(1), 1)
    overall = np.trace(ev.confusion) / max(ev.confusion.sum(), 1)
    lines = [
        f"# Model card: {meta['name']} v{meta['version']}",
        "",
        "_Generated by `training.model_card` when this version was exported; every figure was measured "
        "on the exported inference function._",
        "",
        "## What it is for",
        "",
        PURPOSES.get(meta["name"], "An image or feature classifier exported by this project."),
        "",
        f"Input `{meta['input']['name']}`: {meta['input']['dtype']} "
        f"[{', '.join('N' if d is None else str(d) for d in meta['input']['shape'])}]; output "
        f"`probabilities` over {len(ev.labels)} classes ({', '.join(ev.labels)}), calibrated by temperature "
        "scaling inside the graph.",
        "",
        "## Data and split",
        "",
        f"Source: `{training.get('data_source', 'unknown')}`. Examples: "
        + ", ".join(f"{split} {count:,}" for split, count in ev.splits.items())
        + f"; stratified by class, seed {training.get('seed', 0)}. The validation split was held out of "
        "training; the temperature and the accuracy figures below were measured on held-out data only.",
        "",
        "## How it was made",
        "",
        f"- Command: `{training.get('command', 'unknown')}`",
    ]
    if lineage:
        lines.append(
            f"- Calibrated from version {lineage['source_version']} (same weights) by `{lineage['command']}`"
        )
    lines += [
        f"- Training time: {training.get('training_seconds', '?')} s on {training.get('devices', 1)} "
        f"{training.get('accelerator', '?')} device(s), precision {training.get('precision', 'float32')}; "
        f"TensorFlow {training.get('tensorflow_version', '?')}, Keras {training.get('keras_version', '?')}, "
        f"{training.get('date', '?')}",
        f"- Recipe: `{training.get('recipe', {})}`",
        "",
        f"## Accuracy ({ev.held_out} split, {int(ev.confusion.sum()):,} examples)",
        "",
        f"Overall **{overall:.1%}**.",
        "",
        "| class | accuracy | examples |",
        "|---|---|---|",
        *(
            f"| {label} | {acc:.1%} | {int(n)} |"
            for label, acc, n in zip(ev.labels, per_class, ev.confusion.sum(1), strict=True)
        ),
        "",
        "![per-class accuracy](per_class_accuracy.png)",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## Calibration",
        "",
        f"One temperature, **T = {fitted.temperature:.4f}**, fitted on {fitted.fitted_on} by minimising "
        f"the negative log-likelihood; the export divides the log-probabilities by it "
        f"({'sharpening' if fitted.temperature < 1 else 'softening'} them). It cannot change any answer. "
        "ECE: expected calibration error over 15 equal-width confidence bins.",
        "",
        "| | accuracy | NLL | ECE | Brier | mean confidence |",
        "|---|---|---|---|---|---|",
        *(
            f"| {stage} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} "
            f"| {m['mean_confidence']:.4f} |"
            for stage, m in (("before", fitted.before), ("after", fitted.after))
        ),
        "",
        "![reliability before](reliability_before.png) ![reliability after](reliability_after.png)",
        "",
    ]
    if ev.robustness is not None:
        clean = ev.robustness["clean"]
        lines += [
            "## Robustness (validation split)",
            "",
            "Accuracy on the validation images as they are and after each corruption, sent through the "
            "exported function (whatever preprocessing it does, it does here too).",
            "",
            "| condition | accuracy | change |",
            "|---|---|---|",
            *(
                f"| {name} | {acc:.1%} | {'' if name == 'clean' else f'{acc - clean:+.1%}'} |"
                if acc is not None
                else f"| {name} | not measured (the `service` package was not installed) | |"
                for name, acc in ev.robustness.items()
            ),
            "",
        ]
    lines += [
        *runtimes_section(meta),
        "## Inputs of no class",
        "",
        f"The model always answers one of its {len(ev.labels)} classes, whatever it is given. How "
        f"confident it is on {ev.ood['all']['count']} inputs that are none of them ({ev.ood_description}):",
        "",
        "| inputs | count | mean confidence before calibration | after | share answered with ≥ 0.9 |",
        "|---|---|---|---|---|",
        *(
            f"| {kind} | {row['count']} | {row['mean_confidence_before']:.3f} | "
            f"{row['mean_confidence_after']:.3f} | {row['share_at_least_0.9_after']:.1%} |"
            for kind, row in ev.ood.items()
        ),
        "",
        "A high probability is therefore no proof that the input belongs to any class; the calibration "
        "holds for inputs like the training data, not for these.",
        "",
        *_ood_section(meta.get("ood")),
        "## Known limits",
        "",
        *_limits(meta, ev),
        "",
    ]
    return "\n".join(lines)


RUNTIMES_HEADING = "## Runtimes"


def runtimes_section(meta: dict) -> list[str]:
    """The card's lines on the faster forms of the export (`training.fastpath`), if any: what each
    gives against the SavedModel on held-out data, and the command that made it."""
    runtimes = meta.get("runtimes") or {}
    if not runtimes:
        return []
    lines = [
        RUNTIMES_HEADING,
        "",
        "The service answers from the SavedModel on GPUs and from the fast form below on CPUs "
        "(MODEL_RUNTIME). Both measured as the service runs them, on the same held-out images:",
        "",
        "| runtime | accuracy | ECE | NLL | top-1 agreement | max \\|Δp\\| |",
        "|---|---|---|---|---|---|",
    ]
    for name, form in sorted(runtimes.items()):
        ev = form["evaluation"]
        if not any(line.startswith("| savedmodel |") for line in lines):
            sm = ev["savedmodel"]
            lines.append(f"| savedmodel | {sm['accuracy']:.4f} | {sm['ece']:.4f} | {sm['nll']:.4f} | — | — |")
        m = ev[name]
        lines.append(
            f"| {name} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m['nll']:.4f} | {ev['top1_agreement']:.2%} "
            f"| {ev['max_abs_probability_difference']:.4f} |"
        )
    for name, form in sorted(runtimes.items()):
        ev = form["evaluation"]
        round_trip = (
            ""
            if form.get("includes_jpeg_round_trip")
            else "; the JPEG round trip is done before it, in Pillow"
        )
        lines += [
            "",
            f"- `{name}`: `{form['path']}` ({form['size_bytes'] / 1e6:.1f} MB), {form['quantization']}"
            f"{round_trip}. Measured on the {ev['split']} split ({ev['examples']:,} examples)"
            + (
                f"; the same abstain decision as the SavedModel on {ev['abstain_agreement']:.2%} of them"
                f" (scores within {ev['max_abs_ood_score_difference']})"
                if "abstain_agreement" in ev
                else ""
            )
            + f". Made by `{form['command']}`.",
        ]
    return [*lines, ""]


def update_runtimes_section(card: Path, meta: dict) -> None:
    """Rewrite the runtimes section of an existing card (added before "Inputs of no class")."""
    text = card.read_text()
    section = "\n".join(runtimes_section(meta)) + "\n"
    if RUNTIMES_HEADING in text:
        start = text.index(RUNTIMES_HEADING)
        end = text.index("\n## ", start + 1) + 1
        text = text[:start] + section + text[end:]
    else:
        anchor = text.index("## Inputs of no class")
        text = text[:anchor] + section + text[anchor:]
    card.write_text(text)


def _ood_section(declared: dict | None) -> list[str]:
    """The out-of-distribution score the export declares, as measured when it was fitted."""
    if not declared:
        return []

    def rows(table: dict) -> list[str]:
        return [
            f"| {group} | {r['images']} | {r['auroc']:.3f} | {r['fpr_at_95_tpr']:.1%} "
            f"| {r['abstained']:.1%} |"
            for group, r in table.items()
        ]

    lines = [
        "## Out-of-distribution score",
        "",
        f"A second output, `{declared['output']}` (higher: less like the training classes): "
        f"{declared['method']}. Fitted on {declared['fitted_on']}. Answers abstain (`abstain: true`, "
        f'"probably none of these") above **{declared["threshold"]}**; on the validation split that is '
        f"{declared['abstained_validation']:.1%} of the images.",
        "",
        f"Measured on {declared['evaluated_on']} (AUROC; FPR at 95% TPR: the share of validation images "
        "flagged when 95% of the outliers are; abstained: share of the outliers above the threshold):",
        "",
        "| outliers | images | AUROC | FPR at 95% TPR | abstained |",
        "|---|---|---|---|---|",
        *rows(declared["evaluation"]),
        "",
    ]
    for name, table in declared.get("baselines", {}).items():
        lines += [
            f"Compared: `{name}` on the same images (its own threshold keeping 95% of validation images):",
            "",
            "| outliers | images | AUROC | FPR at 95% TPR | abstained |",
            "|---|---|---|---|---|",
            *rows(table),
            "",
        ]
    lines += [
        "Near outliers (photos of other animals and vehicles) look like the classes to the network and "
        "mostly pass; the score is for pictures that are clearly none of them.",
        "",
    ]
    return lines


def _limits(meta: dict, ev: Evidence) -> list[str]:
    spec = meta["input"]
    if spec["name"] != "image":
        return [
            f"- Trained on {ev.splits['train']} flowers of three species from one 1936 collection; "
            "measurements outside "
            "their ranges are extrapolation, answered confidently (above).",
            "- Inputs are centimetres; other units give wrong answers without any error.",
        ]
    height, width = spec["shape"][1:3]
    limits = [
        f"- Sees {height}×{width} RGB pixels: larger uploads are resized by the service first, and "
        "fine detail is lost.",
        "- Calibrated on the validation split, i.e. on images like the training images; on other "
        "kinds of photo its probabilities are less reliable.",
    ]
    jpeg = spec.get("jpeg_round_trip")
    if jpeg:
        limits.insert(
            0,
            f"- Trained on JPEG images (quality {jpeg['quality']}, chroma subsampled: "
            f"{jpeg['chroma_subsampled']}); every input goes through the same JPEG round trip inside "
            "the export, so noise-like detail is removed before the network sees it.",
        )
    return limits
