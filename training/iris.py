"""The Iris MLP and its training recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers
from sklearn.model_selection import StratifiedKFold


@dataclass(frozen=True)
class Recipe:
    epochs: int = 150
    batch_size: int = 16
    hidden: tuple[int, ...] = (16, 16)
    learning_rate: float = 0.01
    cv_folds: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(recipe: Recipe, train_features: np.ndarray, num_classes: int) -> keras.Model:
    """Raw measurements in centimetres [N, 4] in, class probabilities out; the standardization
    (mean and variance of the training split) is a layer of the model."""
    normalize = layers.Normalization(name="standardize")
    normalize.adapt(train_features)
    inputs = keras.Input((train_features.shape[1],), dtype="float32", name="features")
    x = normalize(inputs)
    for units in recipe.hidden:
        x = layers.Dense(units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="iris_mlp")


def compile_model(model: keras.Model, recipe: Recipe) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def train(model, data, recipe: Recipe, epochs: int | None = None):
    compile_model(model, recipe)
    return model.fit(
        data.train.x,
        data.train.y,
        batch_size=recipe.batch_size,
        epochs=epochs or recipe.epochs,
        validation_data=(data.validation.x, data.validation.y),
        verbose=2,
    )


def cross_validate(
    x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int, epochs: int | None = None
) -> tuple[list[float], np.ndarray]:
    """Accuracy of a fresh model on each held-out fold of a stratified k-fold split, and every
    example's probabilities from the model that did not see it (out-of-fold): 150 held-out
    predictions, where the validation split has 15, so enough to fit a temperature on."""
    scores = []
    out_of_fold = np.zeros((len(y), int(y.max()) + 1), dtype=np.float32)
    folds = StratifiedKFold(recipe.cv_folds, shuffle=True, random_state=seed)
    for fold, (train_idx, test_idx) in enumerate(folds.split(x, y)):
        keras.utils.set_random_seed(seed + fold)
        model = build_model(recipe, x[train_idx], int(y.max()) + 1)
        compile_model(model, recipe)
        model.fit(
            x[train_idx],
            y[train_idx],
            batch_size=recipe.batch_size,
            epochs=epochs or recipe.epochs,
            verbose=0,
        )
        out_of_fold[test_idx] = model(x[test_idx], training=False).numpy()
        scores.append(float(np.mean(out_of_fold[test_idx].argmax(1) == y[test_idx])))
    return scores, out_of_fold
