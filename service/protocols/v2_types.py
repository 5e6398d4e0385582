"""Open Inference Protocol v2 (KServe v2, Triton) wire types, as the REST spec names them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Parameter = StrictStr | StrictInt | StrictFloat | StrictBool
Parameters = dict[str, Parameter]
Dimension = Annotated[StrictInt, Field(ge=0)]


class Wire(BaseModel):
    # Clients add fields of their own (KServe's client sends "model_name"); the spec's are read.
    model_config = ConfigDict(extra="ignore")


class MetadataTensor(Wire):
    name: str
    datatype: str = Field(examples=["UINT8"])
    shape: list[int] = Field(description="-1 for a variable dimension", examples=[[-1, 32, 32, 3]])


class ServerMetadata(Wire):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(Wire):
    name: str
    versions: list[str] = Field(description="versions that can be asked for: the live one")
    platform: str = Field(examples=["tensorflow_savedmodel"])
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerLive(Wire):
    live: bool


class ServerReady(Wire):
    ready: bool


class ModelReady(Wire):
    name: str
    ready: bool


class RequestInput(Wire):
    name: str
    shape: list[Dimension] = Field(examples=[[1, 4]])
    datatype: str = Field(examples=["FP32"])
    parameters: Parameters | None = Field(
        None,
        description="`binary_data_size`: the tensor is in the binary part of the body;"
        ' `content_type`: "base64" for BYTES data given as base64 strings',
    )
    data: Any = Field(None, description="the tensor's elements in row-major order, nested or flat")


class RequestOutput(Wire):
    name: str
    parameters: Parameters | None = Field(None, description="`binary_data`: answer in the binary part")


class InferenceRequest(Wire):
    id: str | None = None
    parameters: Parameters | None = Field(
        None,
        description="`binary_data_output`: every output in binary; `timeout`: microseconds the client"
        " waits for the answer, as Triton reads it (0: none stated; see the Request-Timeout header)",
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="absent when the tensor is in the binary part")


class InferenceResponse(Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]
