"""TensorFlow Serving's gRPC API (`tensorflow.serving.PredictionService` Predict and
GetModelMetadata, `ModelService.GetModelStatus`): the same models and answers as the TF Serving
REST routes (both from service/protocols/tfserving_model.py), with tensors as TensorFlow's `TensorProto`.

Tensors go by the SavedModel signature's names: the input `image` (DT_UINT8 [n, H, W, 3]; or
DT_STRING [n], encoded image files, as REST's `{"b64": ...}` instances) or `features`
(DT_FLOAT [n, N]); the output `probabilities` (DT_FLOAT [n, classes]).
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import any_pb2, wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2

from service import jsonbody
from service.dataplane import DataPlane, Served, version_number
from service.faults import CodecError, UnfitInput
from service.predictor import Predictor
from service.protocols import tfserving_model
from service.protocols.tensors import check_declared, encoded_files, numeric_array
from service.protocols.tfserving_codec import TF_DTYPES
from service.protocols.third_party import tensorflow_serving_pb2 as pb

WIRE_PACKAGE = "tensorflow.serving"
PREDICTION_SERVICE = pb.DESCRIPTOR.services_by_name["PredictionService"]
MODEL_SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"]
GUARDED = ("Predict",)  # as over REST, only inference needs the API key
SIGNATURE_DEF = "signature_def"
# The type URL TF Serving's clients unpack the metadata's Any by.
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

# dtype → (numpy dtype, the TensorProto field holding its values when not in tensor_content)
TENSORS: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}


def to_array(
    tensor: tensor_pb2.TensorProto, name: str, max_rows: int | None = None, max_elements: int | None = None
) -> np.ndarray:
    """A TensorProto's values as an array, or CodecError: its values must fill its shape exactly.
    Refused from its declared shape first (tensors.check_declared, as every door does), and its
    values counted before any is converted."""
    what = f"input {name!r}"
    if tensor.dtype not in TENSORS:
        names = ", ".join(types_pb2.DataType.Name(d) for d in TENSORS)
        raise CodecError(f"{what}: dtype {types_pb2.DataType.Name(tensor.dtype)} is not one of {names}")
    if tensor.tensor_shape.unknown_rank or any(d.size < 0 for d in tensor.tensor_shape.dim):
        raise CodecError(f"{what}: the shape must be fully known")
    shape = [d.size for d in tensor.tensor_shape.dim]
    check_declared(what, shape, max_rows, max_elements)
    count = math.prod(shape)
    dtype, field = TENSORS[tensor.dtype]
    if tensor.tensor_content and tensor.dtype != types_pb2.DT_STRING:
        if len(tensor.tensor_content) != count * dtype.itemsize:
            size = count * dtype.itemsize
            raise CodecError(f"{what}: shape {shape} takes {size} bytes; got {len(tensor.tensor_content)}")
        return np.frombuffer(tensor.tensor_content, dtype).reshape(shape)
    values = getattr(tensor, field)
    if len(values) != count:
        raise CodecError(f"{what}: shape {shape} holds {count} values; got {len(values)}")
    if tensor.dtype == types_pb2.DT_STRING:
        array = np.empty(count, object)
        array[:] = list(values)
        return array.reshape(shape)
    return numeric_array(np.asarray(values).tolist(), dtype, what).reshape(shape)


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A float32 (or bool) array as TF's own clients write it: its bytes in tensor_content."""
    is_bool = array.dtype == np.bool_
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_BOOL if is_bool else types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=np.ascontiguousarray(array, np.bool_ if is_bool else "<f4").tobytes(),
    )


def signature_def(signature: tfserving_model.Signature) -> meta_graph_pb2.SignatureDef:
    """The signature as TensorFlow's SignatureDef."""

    def info(tensor: tfserving_model.Tensor) -> meta_graph_pb2.TensorInfo:
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in tensor.shape]
        return meta_graph_pb2.TensorInfo(
            dtype=types_pb2.DataType.Value(TF_DTYPES[tensor.dtype.name]),
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
        )

    return meta_graph_pb2.SignatureDef(
        inputs={name: info(tensor) for name, tensor in signature.inputs.items()},
        outputs={name: info(tensor) for name, tensor in signature.outputs.items()},
        method_name=signature.method_name,
    )


def requested_version(spec: pb.ModelSpec) -> int | None:
    """The version `spec` asks for (service.dataplane.version_number)."""
    choice = spec.WhichOneof("version_choice")
    number = spec.version.value if choice == "version" else None
    return version_number(spec.name, number, spec.version_label if choice == "version_label" else None)


def answered_spec(predictor: Predictor) -> pb.ModelSpec:
    spec = pb.ModelSpec(name=predictor.name, signature_name=predictor.contract.signature)
    spec.version.value = predictor.version
    return spec


class PredictionServicer:
    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def Predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        spec = request.model_spec
        served = self.plane.live(spec.name, requested_version(spec))
        predictor = served.predictor
        with self.plane.expecting(served):
            tfserving_model.check_signature(predictor, spec.signature_name)
            wanted = tfserving_model.output_names(predictor, list(request.output_filter))
            if set(request.inputs) != {predictor.input_name}:
                names = ", ".join(sorted(map(repr, request.inputs))) or "none"
                raise UnfitInput(f"inputs {names}; the signature has one input, {predictor.input_name!r}")
            # Off the event loop, as REST's bodies are.
            tensor = await jsonbody.parse_off_the_loop(
                to_array,
                request.inputs[predictor.input_name],
                predictor.input_name,
                self.plane.max_rows,
                self.plane.max_rows * math.prod(predictor.input_shape),
            )
            rows = await self._rows(served, tensor)
        classified = await self.plane.classify(served, rows)
        outputs = tfserving_model.output_values(predictor, classified, wanted)
        return pb.PredictResponse(
            model_spec=answered_spec(predictor),
            outputs={name: to_tensor_proto(values) for name, values in outputs.items()},
        )

    async def GetModelMetadata(self, request: pb.GetModelMetadataRequest) -> pb.GetModelMetadataResponse:
        if list(request.metadata_field) != [SIGNATURE_DEF]:
            raise UnfitInput(f'metadata_field must be ["{SIGNATURE_DEF}"], the only metadata served')
        predictor = self.plane.live(request.model_spec.name, requested_version(request.model_spec)).predictor
        # One description (tfserving_model.signature), which REST writes as this message's JSON form.
        served = tfserving_model.signature(predictor)
        definitions = pb.SignatureDefMap(signature_def={served.name: signature_def(served)})
        metadata = any_pb2.Any(type_url=SIGNATURE_DEF_MAP_URL, value=definitions.SerializeToString())
        runtime = any_pb2.Any()
        runtime.Pack(wrappers_pb2.StringValue(value=predictor.runtime_name))
        return pb.GetModelMetadataResponse(
            model_spec=answered_spec(predictor),
            metadata={SIGNATURE_DEF: metadata, tfserving_model.RUNTIME: runtime},
        )

    async def _rows(self, served: Served, tensor: np.ndarray) -> np.ndarray:
        """Numbers as they are (the data plane checks them), or strings as encoded image files."""
        if tensor.dtype != object:
            return tensor
        return await self.plane.decode_files(served, encoded_files(tensor, served.predictor.input_name))


class ModelServicer:
    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def GetModelStatus(self, request: pb.GetModelStatusRequest) -> pb.GetModelStatusResponse:
        spec = request.model_spec
        status = tfserving_model.status(self.plane.registry.state(spec.name), requested_version(spec))
        return pb.GetModelStatusResponse(
            model_version_status=[
                pb.ModelVersionStatus(
                    version=int(v.version),
                    state=pb.ModelVersionStatus.State.Value(v.state),
                    status=pb.StatusProto(
                        error_code=error_codes_pb2.Code.Value(v.status.error_code),  # REST names it
                        error_message=v.status.error_message,
                    ),
                )
                for v in status.model_version_status
            ]
        )
