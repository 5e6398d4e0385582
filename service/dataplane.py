"""One data plane behind every front door: the native routes, Open Inference Protocol v2, TF
Serving's REST API (and gRPC) turn their wire format into these calls and the answers back.
Nothing here knows a wire format; every check of what a model is given (count, shape, dtype,
values, decodable images) and of what it answers (one finite row per input row) is made here,
once.

A request's path, whichever door it came in by:

    served = plane.live(name, version)         # the version that answers it, even across a swap
    with plane.expecting(served):               # its body is on its way: a batch may wait for it
        body = ...                              # read by the door
        rows = await plane.decode_files(served, files)   # image files -> rows (or the door's own
                                                          # numbers, as a numpy array)
    result = await plane.classify(served, rows) # checked, batched, checked, labelled

Faults raise the exceptions of `service.faults`, `service.images` and `service.registry`; each
door maps them to its own shape through one table (`service.errors.STATUS`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import cast

import numpy as np

from service import deadlines
from service.batching import MicroBatcher
from service.budget import MIB, BudgetExceeded, DecodeBudget
from service.decoders import Decoders
from service.faults import NonFiniteOutput, NoRows, TooManyRows, UnfitInput
from service.images import ImageRejected, decode_image
from service.metrics import Metrics
from service.predictor import Predictor
from service.registry import ModelRegistry, ServedModel, UnknownModel
from service.resizing import NotBuiltYet
from service.settings import Settings

# A single file up to this size is decoded on the event loop (a 96x96 PNG or a 224x224 JPEG):
# quicker than handing it to a decoder thread and back. See DataPlane._decode_all.
INLINE_DECODE_BYTES = 16 * 1024


class UnknownVersion(UnknownModel):
    """A version that is not the one being served (404)."""


class WrongOutput(RuntimeError):
    """The model answered other than one row of probabilities per input row: a bug (500)."""


@dataclass(frozen=True, slots=True)
class Served:
    """The model version that serves one request from start to answer, read once, so a hot swap
    in between cannot mix versions."""

    model: ServedModel
    predictor: Predictor

    @property
    def batcher(self) -> MicroBatcher:
        return self.model.live_batcher


@dataclass(frozen=True, slots=True)
class Classified:
    """A model's answer for the rows of one request."""

    rows: np.ndarray  # exactly what the model was given
    probabilities: np.ndarray  # [n, len(labels)], finite, in label order
    labels: list[str]
    # [n] finite, higher = less like the training classes; None for a model without the score.
    ood_score: np.ndarray | None = None
    abstain_threshold: float | None = None  # the model's, or the request's own

    @property
    def abstain(self) -> list[bool] | None:
        """Whether each row is probably none of the classes (its score above the threshold)."""
        if self.ood_score is None or self.abstain_threshold is None:
            return None
        return (self.ood_score > self.abstain_threshold).tolist()

    @property
    def best(self) -> list[int]:
        """The most probable class of each row; a tie goes to the first of the tied classes."""
        return np.argmax(self.probabilities, axis=1).tolist()

    @property
    def best_labels(self) -> list[str]:
        return [self.labels[i] for i in self.best]

    def ranking(self, row: int, k: int) -> list[int]:
        """Row `row`'s `k` most probable classes, most probable first; ties in label order, so
        the first is always `best[row]`."""
        return np.argsort(-self.probabilities[row], kind="stable")[:k].tolist()


def version_number(model: str, asked: str | int | None, label: str | None = None) -> int | None:
    """The version a client asked for, whichever door it came by, as the number the service knows
    it by; None (whichever is live) when it asked for none. `asked` as the wire spells it: text
    (a path's, a v2 message's) or a number (TF Serving's ModelSpec); a `label` (TF Serving's
    other way to ask) names no version here."""
    if label is not None:
        raise UnknownVersion(f"model {model!r} has no version label {label!r}; ask by number")
    if asked is None or isinstance(asked, int):
        return asked
    # Digits 0-9 only: refuses "+1", " 1" and "1.0", which int() would take, and "¹", which
    # str.isdigit() would pass and int() refuse.
    if not (asked.isascii() and asked.isdigit()):
        raise UnknownVersion(f"model {model!r} has no version {asked!r}; versions are whole numbers")
    return int(asked)


class DataPlane:
    """Find the live version, decode uploads, check rows, batch, check outputs, pick labels."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        decoders: Decoders,
        metrics: Metrics | None = None,
    ):
        self.registry = registry
        self.max_rows = settings.max_batch_size
        self.request_timeout_s = settings.request_timeout_s
        self._decoders = decoders
        self._max_pixels = settings.max_image_pixels
        self._undo_enlargements = settings.undo_enlargements
        # Shared by this worker's decoder threads (service/budget.py).
        self.decode_budget = DecodeBudget(
            settings.decode_budget_mb * MIB,
            settings.decode_wait_s,
            settings.max_request_pixels,
            in_use=metrics.decode_budget_in_use if metrics else None,
            budget=metrics.decode_budget if metrics else None,
        )

    # --- which model -----------------------------------------------------------------------

    def live(self, name: str, version: int | None = None) -> Served:
        """The live version of model `name` (which must be `version` when one is asked for), or
        UnknownModel, UnknownVersion or ModelNotReady."""
        model = self.registry.get(name)
        predictor = cast(Predictor, model.predictor)  # registry.get returns live models only
        if version is not None and version != predictor.version:
            raise UnknownVersion(
                f"model {name!r} has no live version {version}; version {predictor.version} is live"
            )
        return Served(model, predictor)

    def image_model(self) -> Served:
        """The image model served by default: the first by name when there are several."""
        model = self.registry.image_model()
        return Served(model, cast(Predictor, model.predictor))

    # --- the request -----------------------------------------------------------------------

    def expecting(self, served: Served) -> AbstractContextManager[None]:
        """Hold this around reading and decoding a request's body: an idle model may wait a
        moment for it to batch with others (never around `classify`). Refuses at once a request
        the work already queued would keep from being answered by its deadline: the files the
        decoders have yet to get through (an image model's), then the model's rows."""
        deadline = deadlines.deadline(self.request_timeout_s)
        if served.predictor.kind != "image":
            return served.batcher.expecting(deadline)
        # Its files have not been read yet: as many as the recent requests', for the estimate.
        decoders = self._decoders
        return served.batcher.expecting(deadline, ahead_s=decoders.backlog_s(), own_s=decoders.request_s())

    async def decode_files(self, served: Served, files: Sequence[bytes | bytearray]) -> np.ndarray:
        """Encoded image files as the model's rows, decoded, oriented and resized on the decoder
        threads; the first file that cannot be (numbered when there are several) fails all."""
        predictor = served.predictor
        if predictor.kind != "image":
            raise UnfitInput(f"model {predictor.name!r} takes numbers; image files are for image models")
        self._check_count(len(files))
        decode = functools.partial(
            decode_image,
            size=predictor.image_size,
            max_pixels=self._max_pixels,
            budget=self.decode_budget.for_request(),
            undo_enlargements=self._undo_enlargements,
        )
        images = await self._decode_all(files, decode)
        # A request over its budget fails whatever else happened to its files: retrying it
        # (what a 503 from a busy budget invites) would never help.
        over = next((image for image in images if isinstance(image, BudgetExceeded)), None)
        if over is not None:
            raise over
        for number, image in enumerate(images, 1):
            if isinstance(image, ImageRejected) and len(images) > 1:
                raise type(image)(f"image {number}: {image}")
            if isinstance(image, BaseException):
                raise image
        return np.stack(images)

    async def classify(
        self, served: Served, rows: np.ndarray, abstain_threshold: float | None = None
    ) -> Classified:
        """The model's answer for `rows` ([n, *input shape] of its dtype, 1 <= n <= max_rows,
        features finite), computed in a batch with other requests', by the request's deadline
        (service/deadlines.py; REQUEST_TIMEOUT_S after it came in if it stated none).
        `abstain_threshold` replaces the model's declared one for this request (models with a
        score only)."""
        predictor = served.predictor
        self._check_rows(rows, predictor)
        deadline = deadlines.deadline(self.request_timeout_s)
        outputs = await served.batcher.predict(rows, predictor, deadline)
        probabilities = outputs[predictor.output_name]
        if probabilities.shape != (len(rows), len(predictor.labels)):
            raise WrongOutput(f"model {predictor.name!r} answered {probabilities.shape} for {len(rows)} rows")
        if not np.isfinite(probabilities).all():
            raise NonFiniteOutput()
        if predictor.ood is None:
            return Classified(rows, probabilities, predictor.labels)
        score = outputs[predictor.ood.output]
        if score.shape != (len(rows),):
            raise WrongOutput(f"model {predictor.name!r} scored {score.shape} for {len(rows)} rows")
        if not np.isfinite(score).all():
            raise NonFiniteOutput()
        threshold = predictor.ood.threshold if abstain_threshold is None else abstain_threshold
        return Classified(rows, probabilities, predictor.labels, score, threshold)

    # --- checks ----------------------------------------------------------------------------

    def _check_count(self, count: int) -> None:
        if count < 1:
            raise NoRows("no instances to classify")
        if count > self.max_rows:
            raise TooManyRows(self.max_rows)

    def _check_rows(self, rows: np.ndarray, predictor: Predictor) -> None:
        name, shape = predictor.input_name, predictor.input_shape
        if rows.ndim:
            self._check_count(len(rows))
        if rows.ndim == 0 or rows.shape[1:] != shape:
            names = f" ({', '.join(predictor.feature_names)})" if predictor.feature_names else ""
            raise UnfitInput(
                f"input {name!r} must have shape [n, {', '.join(map(str, shape))}]{names};"
                f" got {list(rows.shape)}"
            )
        if rows.dtype != predictor.input_dtype:
            raise UnfitInput(f"input {name!r} must be {predictor.input_dtype}; got {rows.dtype}")
        if predictor.kind == "vector" and not np.isfinite(rows).all():
            limit = np.finfo(predictor.input_dtype).max
            raise UnfitInput(f"input {name!r} must be finite as {predictor.input_dtype} (|x| <= {limit:.3g})")

    async def _decode_all(self, files: Sequence[bytes | bytearray], decode) -> list:
        """Each file's pixels, or the exception decoding it raised. A single small file is
        decoded right here (unless resizing it needs matrices not built yet, which takes
        milliseconds); anything larger goes to the decoder threads (service/decoders.py), where
        Pillow's decoding runs beside the event loop."""
        if len(files) == 1 and len(files[0]) <= INLINE_DECODE_BYTES:
            try:
                return [decode(files[0], build=False)]
            except NotBuiltYet:
                pass
            except Exception as error:
                return [error]
        return await self._decoders.map(decode, files)
