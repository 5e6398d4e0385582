"""What decoding a tensor shares across both protocols and every door (REST and gRPC): the
checks of its declared shape, made before any of its data is read, and JSON numbers to checked
numpy arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.faults import CodecError, TooManyRows, UnfitInput

MAX_DIMENSIONS = 32  # numpy's own limit is 64, and fails beyond it with a bare ValueError


def check_declared(
    what: str, shape: Sequence[int], max_rows: int | None = None, max_elements: int | None = None
) -> None:
    """Refuse a tensor from the shape it declares, before its data is converted (or, for BYTES,
    even walked): more than MAX_DIMENSIONS dimensions or a negative one (CodecError), more than
    `max_rows` rows (TooManyRows), more than `max_elements` values (UnfitInput). Every door
    calls this first, so a huge claim costs the same little on each."""
    if len(shape) > MAX_DIMENSIONS:
        raise CodecError(f"{what}: {len(shape)} dimensions; at most {MAX_DIMENSIONS}")
    if any(d < 0 for d in shape):
        raise CodecError(f"{what}: shape {list(shape)} has a negative dimension")
    if max_rows is not None and shape and shape[0] > max_rows:
        raise TooManyRows(max_rows)
    if max_elements is not None and math.prod(shape) > max_elements:
        raise UnfitInput(
            f"{what}: shape {list(shape)} declares {math.prod(shape)} values;"
            f" at most {max_elements} fit the rows a request may send"
        )


def encoded_files(tensor: np.ndarray, name: str) -> list[bytes]:
    """A tensor of encoded image files as the files: shape [n], or [n, 1] as a column of them;
    UnfitInput for any other shape."""
    if tensor.ndim not in (1, 2) or (tensor.ndim == 2 and tensor.shape[1] != 1):
        raise UnfitInput(
            f"input {name!r} of encoded images must have shape [n] (or [n, 1]); got {list(tensor.shape)}"
        )
    return tensor.ravel().tolist()


def numeric_array(data, dtype: np.dtype, what: str = "tensor") -> np.ndarray:
    """`data` (a number or nested lists of them, of even shape) as an array of `dtype`, or
    CodecError: integers only for integer dtypes, within range; numbers for floats (too large
    ones become infinite, which the data plane refuses as the model's input); true/false for
    booleans. Nothing is rounded or wrapped silently."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise CodecError(f"{what}: data must be a (nested) list of numbers of even shape") from None
    if values.size == 0:
        return np.zeros(values.shape, dtype)
    kinds = "b" if dtype.kind == "b" else "iu" if dtype.kind in "iu" else "iuf"
    if values.dtype.kind not in kinds:
        expected = "true or false" if kinds == "b" else "integers" if kinds == "iu" else "numbers"
        raise CodecError(f"{what}: {dtype} data must be {expected}")
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if values.min() < limits.min or values.max() > limits.max:
            raise CodecError(f"{what}: {dtype} values must be within [{limits.min}, {limits.max}]")
    with np.errstate(over="ignore"):
        return values.astype(dtype)
