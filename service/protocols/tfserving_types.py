"""TensorFlow Serving REST wire types (tensorflow/serving `g3doc/api_rest.md`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Status(Wire):
    error_code: str = Field(examples=["OK"])
    error_message: str = ""


class ModelVersionStatus(Wire):
    version: str
    state: str = Field(description="AVAILABLE for the live version, END for one that failed to load")
    status: Status


class ModelStatus(Wire):
    model_version_status: list[ModelVersionStatus]
    ready: bool = Field(description="KServe's v1 addition: the model has a live version")


class ModelSpec(Wire):
    name: str
    signature_name: str = ""
    version: str


class ModelMetadata(Wire):
    model_spec: ModelSpec
    metadata: dict[str, Any] = Field(description='{"signature_def": {"signature_def": {name: SignatureDef}}}')


class PredictRequest(Wire):
    signature_name: str | None = Field(None, description="the export's serving signature when absent")
    instances: Any = Field(
        None,
        description="row format: one value per instance, or an object naming the input; binary values"
        ' as {"b64": "..."}',
    )
    inputs: Any = Field(None, description="columnar format: the batch, or an object naming the input")
    output_filter: list[str] | None = Field(
        None,
        description="the outputs to answer (as in gRPC's PredictRequest); default: the probabilities "
        "alone. Models with an out-of-distribution score also have `ood_score` and `abstain`",
    )


class PredictResponse(Wire):
    predictions: list[Any] | None = Field(None, description="row format: each instance's probabilities")
    outputs: list[Any] | None = Field(None, description="columnar format: the probabilities of the batch")
