"""Arrow arrays from numpy arrays and back without importing pandas.

`pa.array(numpy_array)` asks pyarrow's pandas shim whether its input is a pandas categorical, and
`Array.to_numpy()` (also `np.asarray(array)`) goes through Arrow's pandas conversion, which imports pandas
too: either imports pandas whenever it is installed, 0.35-0.45 s of CPU once per process, paid by every
`servicex-joiner join` command in an analysis environment (coffea brings pandas) and by every worker
transform process, for arrays that are plain numbers. `numpy_to_arrow` and `arrow_to_numpy` move numeric
and boolean arrays through their buffers (`pa.Array.from_buffers`, `np.frombuffer`; no copy for numbers)
and leave everything else to pyarrow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

_NUMERIC_KINDS = frozenset("iuf")


def numpy_to_arrow(
    values: npt.NDArray[Any], type: pa.DataType | None = None, mask: npt.NDArray[np.bool_] | None = None
) -> pa.Array:
    """`pa.array(values, type=type, mask=mask)` for a 1-d numeric or boolean numpy array, without pandas.

    Args:
        values: the array; anything but a plain 1-d int/uint/float32/float64/bool numpy array in native
            byte order goes to `pa.array` unchanged.
        type: the Arrow type wanted; one other than `values`' own is reached with a (safe) cast, as
            `pa.array` does, for numeric and boolean targets (others go to `pa.array`).
        mask: a 1-d boolean numpy array as long as `values`, True where the value is null.

    Returns:
        An array equal to (and of the same type as) `pa.array(values, type=type, mask=mask)`.
    """
    if not (_plain(values) and values.ndim == 1 and _own_type(values.dtype) is not None):
        return pa.array(values, type=type, mask=mask)
    if mask is not None and not (_plain(mask) and mask.dtype == np.bool_ and mask.shape == values.shape):
        return pa.array(values, type=type, mask=mask)
    own = _own_type(values.dtype)
    assert own is not None
    if type is not None and type != own and not _castable_target(type):
        return pa.array(values, type=type, mask=mask)
    length = len(values)
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        data = pa.py_buffer(np.require(values, requirements=("C", "A")))  # no copy unless sliced/misaligned
    validity, null_count = None, 0
    if mask is not None:
        null_count = int(np.count_nonzero(mask))
        if null_count:
            validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    array = pa.Array.from_buffers(own, length, [validity, data], null_count=null_count)
    return array if type is None or type == own else array.cast(type)


def _plain(values: object) -> bool:
    """A numpy array proper: a subclass (a masked array, say) may carry meaning `pa.array` honours."""
    return type(values) is np.ndarray


def _own_type(dtype: np.dtype[Any]) -> pa.DataType | None:
    """The Arrow type of a numeric or boolean dtype in native byte order, else None."""
    if not dtype.isnative:
        return None
    if dtype == np.bool_:
        return pa.bool_()
    if dtype.kind in _NUMERIC_KINDS and dtype != np.float16:
        return pa.from_numpy_dtype(dtype)
    return None


def _castable_target(data_type: pa.DataType) -> bool:
    """A target type that `pa.array` reaches with the same cast as `Array.cast` (float16 it converts itself)."""
    if pa.types.is_float16(data_type):
        return False
    return bool(pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_boolean(data_type))


def arrow_to_numpy(array: pa.Array | pa.ChunkedArray) -> npt.NDArray[Any]:
    """`array.to_numpy()` for a numeric or boolean array without nulls, without pandas.

    Numbers are a read-only view of the Arrow buffer (one chunk) or one concatenated copy (several), as
    `to_numpy` gives them; booleans are unpacked. Arrays with nulls or of other types go to
    `to_numpy(zero_copy_only=False)`.
    """
    if isinstance(array, pa.ChunkedArray):
        if not all(_viewable(chunk) for chunk in array.chunks):
            converted: npt.NDArray[Any] = array.to_numpy()
            return converted
        if array.num_chunks == 1:
            return arrow_to_numpy(array.chunk(0))
        if array.num_chunks == 0:
            return np.empty(0, dtype=_numpy_dtype(array.type))
        return np.concatenate([arrow_to_numpy(chunk) for chunk in array.chunks])
    if not _viewable(array):
        fallback: npt.NDArray[Any] = array.to_numpy(zero_copy_only=False)
        return fallback
    dtype = _numpy_dtype(array.type)
    data = array.buffers()[1]
    if len(array) == 0 or data is None:
        return np.empty(0, dtype=dtype)
    if dtype == np.bool_:
        bits = np.frombuffer(data, dtype=np.uint8)
        return np.unpackbits(bits, count=array.offset + len(array), bitorder="little")[array.offset :].view(np.bool_)
    values = np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    values.flags.writeable = False  # Arrow's memory, immutable (as `to_numpy` gives it)
    return values


def _viewable(array: pa.Array) -> bool:
    data_type = array.type
    kind_ok = pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_boolean(data_type)
    return bool(kind_ok and array.null_count == 0)


def _numpy_dtype(data_type: pa.DataType) -> np.dtype[Any]:
    """The numpy dtype of a numeric or boolean Arrow type (`to_pandas_dtype` imports no pandas for these)."""
    dtype: np.dtype[Any] = np.dtype(data_type.to_pandas_dtype())
    return dtype
