"""JSON numbers to numpy arrays, checked: the part of decoding that both protocols share."""

from __future__ import annotations

import numpy as np


class CodecError(ValueError):
    """A body that is not a well-formed request of its protocol: the client's mistake (400)."""


def numeric_array(data, dtype: np.dtype, what: str = "tensor") -> np.ndarray:
    """`data` (a number or nested lists of them, of even shape) as an array of `dtype`, or
    CodecError: integers only for integer dtypes, within range; finite numbers for floats;
    true/false for booleans. Nothing is rounded or wrapped silently."""
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
    with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused just below
        converted = values.astype(dtype)
    if dtype.kind == "f" and not np.isfinite(converted).all():
        raise CodecError(f"{what}: {dtype} values must be finite")
    return converted
