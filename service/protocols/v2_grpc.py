"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`,
kserve/open-inference-protocol `open_inference_grpc.proto`): the same models, tensors and answers
as the REST v2 routes (both from service/protocols/v2_model.py), from protobuf messages.

Inputs come as `raw_input_contents` (what tritonclient always sends: numbers little-endian,
each BYTES element a 4-byte little-endian length and its bytes, as the binary tensor data
extension) or as typed `contents`; the answer is raw when the request was, typed otherwise
(tritonclient reads numeric outputs only from `raw_output_contents`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service import deadlines, jsonbody
from service.dataplane import DataPlane, Served, version_number
from service.faults import CodecError
from service.protocols import v2_model
from service.protocols.tensors import check_declared
from service.protocols.third_party import open_inference_pb2 as pb
from service.protocols.v2_codec import BYTES, from_binary, from_json, to_binary
from service.registry import ModelNotReady, UnknownModel

# The typed `contents` field that carries each datatype (FP16 has none: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
WIRE_PACKAGE = "inference"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
GUARDED = ("ModelInfer",)  # as over REST, only inference needs the API key


def decode_inputs(
    request: pb.ModelInferRequest, max_rows: int | None = None, max_elements: int | None = None
) -> dict[str, np.ndarray]:
    """Each input's tensor by name, from its raw contents or its typed ones; refused from its
    declared shape first (tensors.check_declared, as over REST), and its values counted before
    any is converted."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise CodecError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; one each")
    tensors: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name, shape = tensor.name, list(tensor.shape)
        if name in tensors:
            raise CodecError(f"input {name!r} given twice")
        check_declared(f"input {name!r}", shape, max_rows, max_elements)
        if raw:
            tensors[name] = from_binary(raw[index], tensor.datatype, shape, name)
        else:
            tensors[name] = _from_contents(tensor, shape)
    return tensors


def encode_outputs(
    response: pb.ModelInferResponse, outputs: Sequence[tuple[str, str, np.ndarray]], raw: bool
) -> None:
    """(name, datatype, array) of each output into `response`, raw or typed."""
    for name, datatype, array in outputs:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(to_binary(array, datatype))
        elif datatype == BYTES:
            tensor.contents.bytes_contents.extend(array.ravel().tolist())
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise CodecError(
            f"input {tensor.name!r}: datatype {tensor.datatype!r} cannot be sent as contents; send it raw"
        )
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):  # counted before anything is converted
        raise CodecError(
            f"input {tensor.name!r}: shape {shape} holds {math.prod(shape)} elements;"
            f" the data has {len(values)}"
        )
    if tensor.datatype != BYTES:
        return from_json(np.asarray(values).tolist(), tensor.datatype, shape, tensor.name)
    array = np.empty(len(values), object)
    array[:] = list(values)
    return array.reshape(shape)


def _value(parameter: pb.InferParameter) -> object:
    """A request parameter's value, whichever of its types it was sent as."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else 0


class InferenceServicer:
    """The RPCs of `inference.GRPCInferenceService`, each a request message in, a response out."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.registry.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        metadata = v2_model.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=metadata.extensions
        )

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        """Ready when the model (and the version, when given) is live; tritonclient reads
        `ready`, so a model that is not, or does not exist, answers false, not an error."""
        try:
            self._live(request.name, request.version)
        except (UnknownModel, ModelNotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        metadata = v2_model.metadata(self._live(request.name, request.version).predictor)
        response = pb.ModelMetadataResponse(
            name=metadata.name, versions=metadata.versions, platform=metadata.platform
        )
        for tensor in metadata.inputs:
            response.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for tensor in metadata.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        served = self._live(request.model_name, request.model_version)
        predictor = served.predictor
        with self.plane.expecting(served):
            wanted = v2_model.output_names(predictor, [output.name for output in request.outputs])
            # Off the event loop, as REST's bodies are: BYTES elements are walked one by one.
            max_elements = self.plane.max_rows * math.prod(predictor.input_shape)
            tensors = await jsonbody.parse_off_the_loop(
                decode_inputs, request, self.plane.max_rows, max_elements
            )
            rows = await v2_model.rows(self.plane, served, tensors)
        if "timeout" in request.parameters:  # Triton's, beside the call's own deadline
            deadlines.answer_within_microseconds(_value(request.parameters["timeout"]))
        classified = await self.plane.classify(served, rows)
        computed = v2_model.output_values(predictor, classified)
        response = pb.ModelInferResponse(
            model_name=predictor.name, model_version=str(predictor.version), id=request.id
        )
        answers = [(name, v2_model.datatype(computed[name]), computed[name]) for name in wanted]
        encode_outputs(response, answers, raw=bool(request.raw_input_contents))
        return response

    def _live(self, name: str, version: str) -> Served:
        """The live version of `name`; an empty version (proto3's unset) asks for none in particular."""
        return self.plane.live(name, version_number(name, version or None))
