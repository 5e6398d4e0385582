"""Temperature scaling: one number that makes a classifier's probabilities honest.

A network's top probability should be how often it is right. Label smoothing, weight decay and
early stopping all bend that: the shipped CIFAR-10 network is right 90% of the time while its
mean top probability is 0.71. Dividing the logits by a temperature T (T < 1 sharpens, T > 1
softens) fixes most of that without changing any answer, since it cannot reorder the classes.

The exported networks end in a softmax, so the logits are recovered as log(probabilities): the
softmax of log(p) / T equals the softmax of logits / T exactly (a softmax ignores the constant
by which log(p) and the logits differ). That applies to any export's `probabilities`, test-time
augmentation averages included, and needs no access to the layers inside.

T is fitted by minimising the negative log-likelihood on held-out data; NLL is convex in 1/T,
so a golden-section search over log T finds its minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # bounds of the search; a fit at either bound is suspect
TINY = 1e-30  # floor before the log: a probability that underflowed to 0 stays the least likely


@dataclass(frozen=True)
class Calibration:
    temperature: float
    fitted_on: str  # which held-out predictions T was fitted on
    before: dict  # calibration_metrics of those predictions, as they were
    after: dict  # and divided by T

    def to_metadata(self) -> dict:
        return {
            "method": "temperature",
            "temperature": round(self.temperature, 4),
            "fitted_on": self.fitted_on,
            "before": self.before,
            "after": self.after,
        }


def fit(probabilities: np.ndarray, labels: np.ndarray, fitted_on: str) -> Calibration:
    """The temperature that minimises the NLL of `probabilities` (N, C) for `labels` (N,)."""
    temperature = fit_temperature(probabilities, labels)
    return Calibration(
        temperature,
        fitted_on,
        calibration_metrics(probabilities, labels),
        calibration_metrics(apply_temperature(probabilities, temperature), labels),
    )


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, tolerance: float = 1e-5) -> float:
    log_p = np.log(np.maximum(probabilities.astype(np.float64), TINY))

    def nll(log_t: float) -> float:
        return negative_log_likelihood(_softmax(log_p / math.exp(log_t)), labels)

    # Golden-section search: keeps the bracket [a, b] around the minimum, shrinking it by the
    # golden ratio each step, reusing one of the two inner evaluations.
    a, b = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tolerance:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """NumPy twin of `temperature_scaled`, for measuring before exporting."""
    log_p = np.log(np.maximum(probabilities.astype(np.float64), TINY))
    return _softmax(log_p / temperature).astype(np.float32)


def temperature_scaled(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """`probabilities` recalibrated inside a TensorFlow graph (what the export serves)."""
    log_p = tf.math.log(tf.maximum(probabilities, TINY))
    return tf.nn.softmax(log_p / tf.constant(temperature, log_p.dtype), axis=-1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Accuracy, NLL, expected calibration error, Brier score and mean top probability."""
    p = probabilities.astype(np.float64)
    confidence = p.max(1)
    one_hot = np.eye(p.shape[1])[labels]
    return {
        "accuracy": round(float(np.mean(p.argmax(1) == labels)), 4),
        "nll": round(negative_log_likelihood(p, labels), 4),
        "ece": round(expected_calibration_error(p, labels, bins), 4),
        "brier": round(float(np.mean(np.sum((p - one_hot) ** 2, axis=1))), 4),
        "mean_confidence": round(float(confidence.mean()), 4),
    }


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, TINY))))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their counts."""
    table = reliability(probabilities, labels, bins)
    gaps = np.abs(table["accuracy"] - table["confidence"]) * table["count"]
    return float(np.nansum(gaps) / len(labels))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of top probability: count, accuracy and mean confidence (NaN if empty)."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    # Bin i holds (i/bins, (i+1)/bins]; a confidence is never 0 so nothing falls below bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        accuracy = np.bincount(index, correct, bins) / count
        mean_confidence = np.bincount(index, confidence, bins) / count
    return {
        "edges": np.linspace(0, 1, bins + 1),
        "count": count,
        "accuracy": accuracy,
        "confidence": mean_confidence,
    }
