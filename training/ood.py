"""The out-of-distribution score: how unlike the training classes an image is, computed inside
the exported graph beside the class probabilities.

A classifier answers one of its classes for anything. Scores read off its outputs alone
(maximum softmax probability, energy) separate CIFAR-10 photos from photos of other things only
so far (AUROC near 0.92 on the shipped network, `compare`); what separates them well is the
network's own pooled features, once something has seen what "other things" look like. So:

* the network is the export's, untouched: accuracy and calibration stay exactly as they were;
* a logistic regression on its frozen features (log1p of the 256 pooled activations, the
  temperature-scaled logits and their energy) is fitted to tell training images from 32 px
  crops of real photographs, textures and synthetic pictures of none of the classes
  (`training.ood_data`, its `dev` sources only): outlier exposure, on a linear head;
* its logit is the score (higher: less like the training classes), a dot product on tensors
  the network computes anyway, so it costs next to nothing per image;
* the threshold is the score's 95th percentile on the validation split (5% of in-distribution
  images abstain), and AUROC / FPR at 95% TPR are measured on the `eval` sources, which no
  fitting saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import cifar10

METHOD = "logistic regression on the network's pooled features, logits and energy (outlier exposure)"
ID_SHARE_KEPT = 0.95  # the threshold keeps this share of validation images answered
REGULARIZATION = 0.1  # the logistic regression's C
TRAIN_IMAGES = 20_000  # training images the head is fitted on (of 45,000: enough for 268 weights)
OUTPUT = "ood_score"


# ---------------------------------------------------------------------------------------------
# The network, rebuilt from an export
# ---------------------------------------------------------------------------------------------


def rebuild_network(version_dir: Path, recipe: cifar10.Recipe, train_images: np.ndarray) -> keras.Model:
    """The export's CNN as a Keras model with its weights: read, in the network's layer order,
    from the variables its serving signature captures (the first two captures are the input
    normalization's mean and variance, constants of `train_images`)."""
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    captured = [
        tf.raw_ops.ReadVariableOp(resource=c, dtype=tf.float32).numpy()
        if c.dtype == tf.resource
        else c.numpy()
        for c in signature.captured_inputs
    ]
    statistics = (captured[0], np.sqrt(captured[1]))  # Keras's Normalization holds the variance
    model = cifar10.build_model(recipe, train_images, int(captured[-1].shape[-1]), statistics)
    expected = [tuple(w.shape) for w in model.weights]
    found = [tuple(c.shape) for c in captured[2:]]
    if expected != found:
        raise ValueError(f"{version_dir}: its variables {found} are not the CNN's {expected}")
    model.set_weights(captured[2:])
    return model


def feature_network(model: keras.Model) -> keras.Model:
    """The network's pooled features and logits (before the softmax) for raw uint8 images."""
    pooled = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalMaxPooling2D))
    logits = model.get_layer("probabilities").input
    return keras.Model(model.inputs, [pooled.output, logits])


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(1, keepdims=True)))[:, 0]


def max_softmax_score(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    return -np.exp(z.max(1) - logsumexp(z))


def energy_score(logits: np.ndarray, temperature: float) -> np.ndarray:
    return -temperature * logsumexp(logits / temperature)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int = 50) -> np.ndarray:
    """Minus the cosine similarity to the k-th nearest of `bank` (training features)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for start in range(0, len(features), 1000):
        chunk = features[start : start + 1000]
        similarity = chunk / np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12) @ bank.T
        out.append(-np.sort(similarity, axis=1)[:, -k])
    return np.concatenate(out)


def head_inputs(features: np.ndarray, logits: np.ndarray, temperature: float) -> np.ndarray:
    """What the head sees: log1p of the pooled activations, scaled logits, energy."""
    return np.concatenate(
        [
            np.log1p(np.maximum(features, 0)),
            logits / temperature,
            energy_score(logits, temperature)[:, None],
        ],
        axis=1,
    )


@dataclass(frozen=True)
class Head:
    """score = head_inputs · weights + bias (standardization folded in)."""

    weights: np.ndarray
    bias: float
    temperature: float

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return head_inputs(features, logits, self.temperature) @ self.weights + self.bias

    def in_graph(self, features: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """The same score as TensorFlow ops, for the exported signature."""
        t = tf.constant(self.temperature, tf.float32)
        scaled = logits / t
        energy = -t * tf.reduce_logsumexp(scaled, axis=1, keepdims=True)
        inputs = tf.concat([tf.math.log1p(tf.nn.relu(features)), scaled, energy], axis=1)
        weights = tf.constant(self.weights[:, None], tf.float32)
        return tf.squeeze(inputs @ weights, axis=1) + tf.constant(self.bias, tf.float32)


def fit_head(
    id_features: np.ndarray,
    id_logits: np.ndarray,
    ood_features: np.ndarray,
    ood_logits: np.ndarray,
    temperature: float,
) -> Head:
    """Logistic regression, in-distribution (0) against outliers (1), classes weighted equally."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate(
        [head_inputs(id_features, id_logits, temperature), head_inputs(ood_features, ood_logits, temperature)]
    )
    y = np.concatenate([np.zeros(len(id_features)), np.ones(len(ood_features))])
    mean, std = x.mean(0), x.std(0) + 1e-6
    fitted = LogisticRegression(C=REGULARIZATION, max_iter=5000, class_weight="balanced").fit(
        (x - mean) / std, y
    )
    weights = fitted.coef_[0] / std
    bias = float(fitted.intercept_[0] - np.sum(fitted.coef_[0] * mean / std))
    return Head(weights.astype(np.float32), bias, temperature)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an outlier scores above an in-distribution input (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return float(roc_auc_score(y, np.concatenate([in_scores, out_scores])))


def fpr_at_95_tpr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Share of in-distribution inputs flagged when the threshold flags 95% of the outliers."""
    threshold = np.quantile(out_scores, 0.05)
    return float(np.mean(in_scores >= threshold))


def threshold_for(in_scores: np.ndarray, kept: float = ID_SHARE_KEPT) -> float:
    """The score above which an input abstains: `kept` of `in_scores` stay at or below it."""
    return float(np.quantile(in_scores, kept))


def evaluation(in_scores: np.ndarray, out_scores: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """Per group of outliers: AUROC, FPR at 95% TPR and the share abstained at `threshold`."""
    table = {}
    for group in sorted(set(groups.tolist())):
        chosen = out_scores[groups == group]
        table[group] = {
            "auroc": round(auroc(in_scores, chosen), 4),
            "fpr_at_95_tpr": round(fpr_at_95_tpr(in_scores, chosen), 4),
            "abstained": round(float(np.mean(chosen > threshold)), 4),
            "images": int(len(chosen)),
        }
    return table
