"""Reports written beside an export: metrics JSON and plots (learning curves, confusion matrix,
per-class accuracy, reliability diagrams)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def write_reports(folder: Path, metrics: dict, history: dict | None, title: str) -> None:
    """metrics.json and the learning curves; the model card adds the evaluation plots."""
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if history:
        plot_learning_curves(history, folder / "learning_curves.png", title)


def plot_learning_curves(history: dict, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[key], "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "o-", label="validation")
        ax.set(xlabel="epoch", ylabel=key, title=f"{title}: {key}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
            fontsize=8,
        )
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_class_accuracy(confusion: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    accuracy = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(labels), 3.5))
    ax.bar(range(len(labels)), accuracy, color="tab:blue")
    for i, value in enumerate(accuracy):
        ax.text(i, value + 0.01, f"{value:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set(ylim=(0, 1.08), ylabel="accuracy", title=f"{title}: accuracy per class")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(table: dict, scores: dict, path: Path, title: str) -> None:
    """A reliability diagram: accuracy against confidence per bin (the diagonal is perfect
    calibration), with the share of predictions in each bin underneath."""
    edges, count = table["edges"], table["count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = count > 0
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.bar(
        centres[filled],
        table["accuracy"][filled],
        width=width,
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    top.plot(
        table["confidence"][filled], table["accuracy"][filled], "o", color="tab:red", label="mean confidence"
    )
    top.set(
        ylim=(0, 1), ylabel="accuracy", title=f"{title}\nECE {scores['ece']:.3f}, NLL {scores['nll']:.3f}"
    )
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(centres, count / count.sum(), width=width, edgecolor="black", color="tab:grey")
    bottom.set(xlim=(0, 1), xlabel="confidence (top probability)", ylabel="share")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
