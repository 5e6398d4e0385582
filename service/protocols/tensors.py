"""JSON numbers to numpy arrays, checked: the part of decoding that both protocols share."""

from __future__ import annotations

import numpy as np

from service.faults import CodecError


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
