"""The tensor checks every protocol door shares (service/protocols/tensors.py), called directly:
encoded image files as a column or a row of them, and a declared shape refused before its data."""

from __future__ import annotations

import numpy as np
import pytest

from service.faults import CodecError, UnfitInput
from service.protocols.tensors import check_declared, encoded_files

FILES = [b"first", b"second", b"third"]


@pytest.mark.parametrize("shape", [(3,), (3, 1)], ids=["[n]", "[n, 1]"])
def test_encoded_files_come_as_a_row_or_a_column_of_them(shape):
    tensor = np.array(FILES, dtype=object).reshape(shape)
    assert encoded_files(tensor, "image_bytes") == FILES


@pytest.mark.parametrize("shape", [(), (1, 3), (3, 2), (3, 1, 1), (1, 1, 3)])
def test_encoded_files_in_any_other_shape_are_refused_with_the_shape(shape):
    tensor = np.full(shape, b"file", dtype=object)
    with pytest.raises(UnfitInput, match=r"input 'image_bytes' of encoded images must have shape \[n\]"):
        encoded_files(tensor, "image_bytes")


@pytest.mark.parametrize("shape", [[-1], [2, -1]])
def test_a_declared_negative_dimension_is_refused(shape):
    with pytest.raises(CodecError, match="has a negative dimension"):
        check_declared("input 'features'", shape)


def test_a_declared_empty_dimension_is_not_refused_here():
    check_declared("input 'features'", [0, 4])  # no rows: the data plane says so, in its words
