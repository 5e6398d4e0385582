"""Request and response bodies, as the OpenAPI schema documents them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# Numbers only: strict refuses "5.1", true and null; NaN and ±Infinity (which Python's JSON
# parser accepts as literals) are refused as well.
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OneInstance(Strict):
    """One example, its features in the order of the model's `feature_names`."""

    features: list[Feature] = Field(examples=[[5.1, 3.5, 1.4, 0.2]])


class Instances(Strict):
    """Several examples, each a list of features, answered in order."""

    # An empty list is refused by the data plane, in the words every door uses.
    instances: list[list[Feature]] = Field(examples=[[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]])


# One example by feature name, e.g. {"sepal_length": 5.1, ...}; names come from the model.
NamedFeatures = dict[str, Feature]


def _request_form(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    return "features" if "features" in body else "instances" if "instances" in body else "named"


# The accepted shapes of a features request, in one sentence for error messages.
FEATURES_FORMS = 'expected {"features": [...]}, {"instances": [[...], ...]} or an object of features by name'
# The tags of the forms below: pydantic puts the tag into an error's location, after "body".
FEATURES_TAGS = frozenset({"features", "instances", "named"})

# The form is chosen by its keys, so a mistake is reported against that form alone.
FeaturesRequest = Annotated[
    Annotated[OneInstance, Tag("features")]
    | Annotated[Instances, Tag("instances")]
    | Annotated[NamedFeatures, Tag("named")],
    Discriminator(_request_form, custom_error_type="invalid_request", custom_error_message=FEATURES_FORMS),
]


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    model: str = Field(examples=["cifar10"])
    version: str = Field(examples=["1"])
    label: str = Field(description="the most probable class", examples=["cat"])
    probabilities: dict[str, float] = Field(description="every class, in the model's label order")
    top_k: list[LabelProbability] | None = Field(None, description="the k most probable, when asked")
    ood_score: float | None = Field(
        None,
        description="models that declare one: how unlike the training classes the input is (higher: "
        "less like them); the model's metadata says how it is computed",
    )
    abstain: bool | None = Field(
        None,
        description="with `ood_score`: true when the score is above the threshold (the model's, or "
        "`?abstain_threshold=`): the input is probably none of the classes",
    )
    input_png: str | None = Field(
        None,
        description="with `?preview=1`: the exact pixels the model received (after decoding, EXIF "
        "orientation and resizing to its input size), as a base64 PNG",
    )


class Predictions(BaseModel):
    predictions: list[Prediction]


class Error(BaseModel):
    """Every failure of the service's own routes: what went wrong, in one line."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    detail: str
    models: dict[str, str] = Field(description='each model: "ready", or why it is not')


class ModelInfo(BaseModel):
    name: str
    ready: bool
    status: str = Field(description='"ready", or why the model is not serving')
    live_version: str | None
    versions: list[str] = Field(description="versions found on disk")
    pinned_version: str | None
    rejected_versions: dict[str, str] = Field(description="versions that failed to load, and why")
    kind: Literal["image", "vector"] | None
    device: str | None
    runtime: str | None = Field(
        description='what computes the live version\'s answers: "savedmodel", or the name of a faster '
        "form its export declares (MODEL_RUNTIME)",
        examples=["tflite-int8"],
    )
    tta: Literal["none", "flip"] | None = Field(description="test-time augmentation of the answers (TTA)")
    labels: list[str] | None
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    metrics: dict[str, Any] | None
    temperature: float | None = Field(
        description="the temperature the live version divides its log-probabilities by inside the graph "
        "(its calibration); null: uncalibrated"
    )
    validation_ece: float | None = Field(
        description="expected calibration error (15 bins) of the live version's calibrated probabilities on "
        "the held-out data the temperature was fitted on (metadata calibration.fitted_on)"
    )
    card: str | None = Field(
        description="where this service serves the live version's model card (Markdown; its figures "
        "are served beside it, and it lies in the version's assets.extra/ on disk)",
        examples=["/models/cifar10/card/MODEL_CARD.md"],
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
